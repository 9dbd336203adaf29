"""Receiving a callback: replay and dedup checks, admission, the turn row, the enqueue.

The model is never called inside a request: `mention_receive` decides admission, records
the turn in its state (queued, or rejected with the reply) and enqueues `turn_generate`
on commit; the worker streams into Redis; refreshes read Redis.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from apps.audit.models import AuditPolicy
from apps.audit.services.policy import PolicyDecision, policy_evaluate
from apps.audit.services.review import review_cases_open_for_turn
from apps.bots import selectors
from apps.bots.models import Bot, Conversation, Turn
from apps.bots.ratelimit import rate_limit_exceeded
from apps.bots.services.deliver import response_url_policy, turn_ledger
from apps.bots.services.files import conversation_file_attach, image_reply
from apps.bots.services.stream import reply_language, stream_refresh, stream_refresh_payload
from apps.bots.services.variants import variant_for_user
from apps.bots.services.welcome import card_click_receive, welcome_payload
from apps.bots.streams import StreamState, deadline_from, stream_owner_set, stream_state_set
from apps.bots.variants import turn_profile_id
from wecom.messages import (
    MAX_CONTENT_BYTES,
    InboundEvent,
    InboundMessage,
    StreamRefresh,
    file_attachment,
    split_at_boundary,
    strip_mention,
)
from wecom.outbound import ResponseUrlRefused, response_url_check
from wecom_ai import queues

logger = logging.getLogger(__name__)

# What publishing a task raises while the broker is unreachable.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuOperationalError, RedisError, OSError)

ANSWERABLE_TYPES = frozenset({"text", "mixed", "voice"})

# WeCom lets one user have three messages awaiting an answer from a bot (doc 100719).
MAX_IN_FLIGHT_PER_USER = 3
# pg_advisory_xact_lock namespace (two-int form: this, hash of bot and user).
_IN_FLIGHT_LOCK_NAMESPACE = 0x1F_1C_A7


def callback_handle(*, bot: Bot, callback: Any, received_at: datetime) -> dict | None:
    """Answer one decrypted callback; the dict is the reply payload, None an empty 200."""
    if isinstance(callback, StreamRefresh):
        return stream_refresh(bot=bot, refresh=callback)
    if isinstance(callback, InboundEvent):
        return event_handle(bot=bot, event=callback)
    turn = mention_receive(bot=bot, message=callback, received_at=received_at)
    return stream_refresh_payload(turn, first_reply=True)


def callback_nonce_remember(*, bot: Bot, timestamp: str, nonce: str, msgid: str) -> bool:
    """Remember a signed (timestamp, nonce) pair for the replay window; False when reused.

    The same pair carrying the same msgid is WeCom redelivering one callback, which the
    msgid dedup (and the feedback dedup) already makes harmless, so it passes; the pair on
    a different message is refused.
    """
    key = f"wecom-nonce:{bot.pk}:{timestamp}:{nonce}"
    window = 2 * settings.WECOM_CALLBACK_MAX_SKEW_SECONDS
    if cache.add(key, msgid, timeout=window):
        return True
    return cache.get(key) == msgid


@dataclass
class Admission:
    """Whether a question is answered, decided before its row exists."""

    reason: str = ""  # empty = admitted
    reply: str = ""
    question_masked: str = ""
    decision: PolicyDecision | None = None
    policies: list[AuditPolicy] = field(default_factory=list)

    def decisions(self) -> list[dict[str, Any]]:
        if self.decision is None or not self.decision.matches:
            return []
        return [{"subject": "question", **self.decision.as_record()}]


def mention_receive(
    *,
    bot: Bot,
    message: InboundMessage,
    received_at: datetime,
    longconn_req_id: str = "",
    channel: str = "",
    external: bool = False,
    test: bool = False,
) -> Turn:
    """Record the turn once per (bot, msgid) and enqueue its answer after commit.

    A repeated delivery (WeCom retries when the ack is slow) finds the same row through the
    unique constraint and gets the same stream id back, so one question is answered once.
    Both doors call this: a callback, and the long-connection connector, which passes the
    frame's req_id so that any connector replica can send the answer under it. The admin's
    test chat is a third door (`test=True`): the same pipeline, the turn marked as a test.
    Other doors name their `channel` (default: the AI bot's, callback or long connection)
    and say whether the sender is `external` (not an employee in the directory).
    """
    existing = Turn.objects.filter(bot=bot, msgid=message.msgid).first()
    if existing is not None:
        if existing.status == Turn.Status.QUEUED and existing.queued_at is None:
            # Its first enqueue failed: WeCom's retry sends it.
            turn_enqueue(
                turn_id=existing.pk,
                profile_id=turn_profile_id(existing),
                priority=queues.PRIORITY_RESENT,
            )
        return existing
    chat_type = Conversation.ChatType.GROUP if message.is_group else Conversation.ChatType.SINGLE
    conversation, _created = Conversation.objects.get_or_create(
        bot=bot,
        chat_type=chat_type,
        chat_id=message.chatid or "",
        userid=message.userid,
        external=external,
    )
    attachment = None if message.is_group else file_attachment(message)
    question = strip_mention(message.text or "")
    if attachment is not None:
        # What the transcript and the ledger show for the file message.
        question = f"📎 {attachment.filename or message.msgid}"
    admission = admission_decide(bot=bot, message=message, question=question, test=test)
    fields: dict[str, Any] = {
        "bot": bot,
        "conversation": conversation,
        "msgid": message.msgid,
        "stream_id": uuid.uuid4().hex,
        "msgtype": message.msgtype,
        "question": question,
        "question_masked": admission.question_masked,
        "filter_decisions": admission.decisions(),
        "response_url": _response_url_accepted(bot=bot, url=message.response_url),
        "received_at": received_at,
        "longconn_req_id": longconn_req_id,
        "channel": channel or (Turn.Channel.LONGCONN if longconn_req_id else Turn.Channel.CALLBACK),
        "is_test": test,
        "variant": variant_for_user(bot=bot, userid=message.userid),
    }
    try:
        with transaction.atomic():
            if not admission.reason:
                _in_flight_check(admission=admission, bot=bot, userid=message.userid)
            turn = _turn_create(admission=admission, fields=fields)
            if attachment is not None and turn.status != Turn.Status.REJECTED:
                conversation_file_attach(
                    bot=bot, conversation=conversation, turn=turn, attachment=attachment
                )
            Conversation.objects.filter(pk=conversation.pk).update(last_turn_at=received_at)
    except IntegrityError:
        return Turn.objects.get(bot=bot, msgid=message.msgid)
    return turn


def _in_flight_check(*, admission: Admission, bot: Bot, userid: str) -> None:
    """A fourth message while three await their answers gets a clear reply at once.

    Deliberate rather than queued: in callback mode the ack itself opens the stream, so a
    fourth stream cannot wait, and a reply that ends at once never holds a fourth stream
    open. The lock serialises the user's concurrent deliveries, so two messages arriving
    together cannot both take the third place.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
            [_IN_FLIGHT_LOCK_NAMESPACE, f"{bot.pk}:{userid}"],
        )
    waiting = Turn.objects.in_flight(bot_id=bot.pk, userid=userid, now=timezone.now()).count()
    if waiting < MAX_IN_FLIGHT_PER_USER:
        return
    with reply_language():
        admission.reason = "in_flight"
        admission.reply = _(
            "I am still answering your previous %(count)s questions. Please wait for those "
            "answers, then ask this one again."
        ) % {"count": waiting}


def _turn_create(*, admission: Admission, fields: dict[str, Any]) -> Turn:
    """The row in its admitted state, its review cases and ledger entry, the stream opened."""
    if admission.reason:
        # A refusal text is admin-written and may exceed what one stream reply can carry.
        reply, _rest = split_at_boundary(admission.reply, MAX_CONTENT_BYTES)
        turn = Turn.objects.create_rejected(
            reason=admission.reason, answer=reply, now=timezone.now(), **fields
        )
    else:
        turn = Turn.objects.create(**fields)
    if admission.decision is not None and admission.decision.needs_review:
        review_cases_open_for_turn(
            turn=turn, decision=admission.decision, policies=admission.policies, subject="question"
        )
    deadline = deadline_from(turn.received_at.timestamp())
    stream_owner_set(turn.stream_id, turn.bot_id)
    if turn.status == Turn.Status.REJECTED:
        turn_ledger(turn)
        stream_state_set(
            turn.stream_id, StreamState(content=turn.answer, finish=True, deadline=deadline)
        )
        logger.info("turn %s rejected: %s", turn.pk, turn.rejection_reason)
    else:
        stream_state_set(turn.stream_id, StreamState(deadline=deadline))
        turn_id, profile_id = turn.pk, turn_profile_id(turn)
        transaction.on_commit(lambda: turn_enqueue(turn_id=turn_id, profile_id=profile_id))
    return turn


def admission_decide(
    *, bot: Bot, message: InboundMessage, question: str, test: bool = False
) -> Admission:
    """Answered by the model or politely declined; the policies see the question once.

    A test question is rate-limited like any, but in a bucket of its own: an admin testing
    as an employee must not use up that employee's questions.
    """
    with reply_language():
        if message.msgtype == "image":
            return Admission(reason="unsupported", reply=image_reply())
        readable_file = not message.is_group and file_attachment(message) is not None
        if not readable_file and (message.msgtype not in ANSWERABLE_TYPES or message.text is None):
            return Admission(
                reason="unsupported",
                reply=_("Sorry, I can only read text for now. Please type your question."),
            )
        if not question.strip():
            return Admission(reason="empty", reply=_("Hello! What would you like to ask?"))
        if not selectors.bot_user_allowed(bot=bot, userid=message.userid):
            return Admission(
                reason="not_allowed",
                reply=_(
                    "Sorry, you are not allowed to use this assistant. "
                    "Please contact your administrator."
                ),
            )
        scope = f"bot:{bot.pk}:user:{message.userid}"
        if test:
            scope += f":test:{message.chatid}"
        if rate_limit_exceeded(scope=scope, limit=bot.rate_limit_per_minute):
            return Admission(
                reason="rate_limited",
                reply=_("You are asking too quickly. Please wait a minute and try again."),
            )
    policies = selectors.bot_policies(bot=bot)
    if not policies:
        return Admission()
    decision = policy_evaluate(policies=policies, text=question)
    admission = Admission(
        question_masked=decision.masked_text, decision=decision, policies=policies
    )
    if decision.blocked:
        admission.reason, admission.reply = "policy_blocked", decision.refusal_message
    return admission


def _response_url_accepted(*, bot: Bot, url: str | None) -> str:
    """The message's response_url if the worker may ever call it, else "" (never stored).

    The URL comes from the callback body; one naming another scheme or host would make
    the worker POST wherever the sender likes. Only its shape is checked here (no DNS on
    the callback path); the address is checked again right before the POST.
    """
    if not url:
        return ""
    try:
        response_url_check(url, response_url_policy())
    except ResponseUrlRefused as exc:
        logger.warning("bot %s: response_url refused: %s", bot.slug, exc)
        return ""
    return url


def turn_enqueue(
    *, turn_id: int, profile_id: int | None = None, priority: int = queues.PRIORITY_FRESH
) -> bool:
    """Send the answer task to its model profile's queue at `priority` (a resumed or re-sent
    turn goes before fresh ones), then stamp `queued_at`; False when the broker refused it.

    Stamped only after the broker took the task, so a turn without `queued_at` was never
    enqueued: the sweeper and a WeCom retry of the same message send it again. A broker
    outage never fails the callback; the turn row is already saved. A turn sent again
    passes a lower `priority` (taken first): it has less of WeCom's window left than the
    fresh questions queued behind it.
    """
    from apps.bots.tasks import turn_generate as turn_generate_task

    if profile_id is None:
        profile_id = turn_profile_id(Turn.objects.select_related("bot", "variant").get(pk=turn_id))
    try:
        turn_generate_task.apply_async(
            args=(turn_id,), queue=queues.inference_queue(profile_id), priority=priority
        )
    except BROKER_ERRORS:
        logger.warning("turn %s could not be enqueued; the sweeper retries", turn_id, exc_info=True)
        return False
    Turn.objects.filter(pk=turn_id).mark_queued(now=timezone.now())
    return True


def event_handle(*, bot: Bot, event: InboundEvent) -> dict | None:
    if event.eventtype == "enter_chat":
        return welcome_payload(bot=bot)
    if event.eventtype == "template_card_event":
        turn = card_click_receive(bot=bot, event=event, received_at=timezone.now())
        return stream_refresh_payload(turn, first_reply=True) if turn is not None else None
    if event.eventtype == "feedback_event":
        feedback_record(bot=bot, event=event)
        return None
    logger.info("bot %s ignored event %s", bot.slug, event.eventtype)
    return None


def feedback_record(*, bot: Bot, event: InboundEvent) -> bool:
    """Store 👍/👎 on the turn whose stream carried the feedback id (our stream id)."""
    body = event.feedback or {}
    feedback_id = str(body.get("id", ""))
    try:
        kind = int(body.get("type", 0))
    except (TypeError, ValueError):
        kind = 0
    if not feedback_id or kind not in Turn.Feedback.values:
        logger.warning("bot %s: feedback event without a usable id/type", bot.slug)
        return False
    # A replayed (or redelivered) event changes nothing; marked only once stored, so a
    # delivery that failed half-way is still recorded when WeCom retries it.
    seen_key = f"wecom-feedback:{bot.pk}:{event.msgid}"
    if cache.get(seen_key) is not None:
        logger.info("bot %s: feedback event %s already recorded", bot.slug, event.msgid)
        return False
    detail = {key: value for key, value in body.items() if key not in {"id", "type"}}
    updated = Turn.objects.filter(bot=bot, stream_id=feedback_id).feedback_record(
        kind=kind, detail=detail, now=timezone.now()
    )
    cache.set(seen_key, 1, timeout=24 * 3600)
    return bool(updated)

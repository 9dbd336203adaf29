"""Domain actions of the bot: receive a mention, answer it, serve stream refreshes.

The callback view and the Celery tasks call these and hold no logic of their own. The
model is never called inside a request: `mention_receive` records the turn and enqueues
`turn_generate` on commit; the worker streams into Redis; refreshes read Redis.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from apps.audit.models import AuditPolicy
from apps.audit.services.ledger import ledger_record_turn
from apps.audit.services.policy import policy_evaluate, policy_stream_guard
from apps.audit.services.review import review_cases_open_for_turn
from apps.bots import selectors
from apps.bots.models import Bot, Conversation, Turn
from apps.bots.ratelimit import rate_limit_exceeded
from apps.bots.streams import (
    StreamFlusher,
    StreamState,
    deadline_from,
    now_epoch,
    stream_owner_get,
    stream_owner_set,
    stream_publish,
    stream_state_get,
    stream_state_set,
)
from apps.directory.selectors import chat_readers
from apps.inference.engine.base import ChatRequest, Engine, EngineError, Generation
from apps.inference.engine.think import ThinkSplitter
from apps.inference.model_load import profile_engine
from apps.inference.models import ModelProfile
from apps.knowledge.services.retrieval import (
    Hit,
    knowledge_retrieve,
    prompt_with_passages,
    sources_footer,
)
from wecom.display import wecom_stream_content
from wecom.messages import (
    MAX_CONTENT_BYTES,
    InboundEvent,
    InboundMessage,
    StreamRefresh,
    split_at_boundary,
    stream_reply,
    strip_mention,
    text_reply,
)
from wecom.outbound import (
    ResponseUrlError,
    ResponseUrlPolicy,
    ResponseUrlRefused,
    post_response_url,
    response_url_check,
)

logger = logging.getLogger(__name__)

ANSWERABLE_TYPES = frozenset({"text", "mixed", "voice"})
# Bytes kept free at the end of a stream for the "continued below" note.
_NOTE_RESERVE = 256
# WeCom accepts a response_url for one hour after the message (101138).
RESPONSE_URL_VALID = timedelta(hours=1)


def _reply_language() -> translation.override:
    return translation.override(settings.WECOM_REPLY_LANGUAGE)


# --- receiving -------------------------------------------------------------------------------


def callback_handle(*, bot: Bot, callback: Any, received_at: datetime) -> dict | None:
    """Answer one decrypted callback; the dict is the reply payload, None an empty 200."""
    if isinstance(callback, StreamRefresh):
        return stream_refresh(bot=bot, refresh=callback)
    if isinstance(callback, InboundEvent):
        return event_handle(bot=bot, event=callback)
    turn = mention_receive(bot=bot, message=callback, received_at=received_at)
    return stream_refresh_payload(turn)


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


def mention_receive(*, bot: Bot, message: InboundMessage, received_at: datetime) -> Turn:
    """Record the turn once per (bot, msgid) and enqueue its answer after commit.

    A repeated delivery (WeCom retries when the ack is slow) finds the same row through the
    unique constraint and gets the same stream id back, so one question is answered once.
    """
    existing = Turn.objects.filter(bot=bot, msgid=message.msgid).first()
    if existing is not None:
        return existing
    chat_type = Conversation.ChatType.GROUP if message.is_group else Conversation.ChatType.SINGLE
    conversation, _created = Conversation.objects.get_or_create(
        bot=bot,
        chat_type=chat_type,
        chat_id=message.chatid or "",
        userid=message.userid,
    )
    question = strip_mention(message.text or "")
    try:
        with transaction.atomic():
            turn = Turn.objects.create(
                bot=bot,
                conversation=conversation,
                msgid=message.msgid,
                stream_id=uuid.uuid4().hex,
                msgtype=message.msgtype,
                question=question,
                response_url=_response_url_accepted(bot=bot, url=message.response_url),
                received_at=received_at,
            )
            Conversation.objects.filter(pk=conversation.pk).update(last_turn_at=received_at)
            _turn_admit(bot=bot, turn=turn, message=message)
    except IntegrityError:
        return Turn.objects.get(bot=bot, msgid=message.msgid)
    return turn


def response_url_policy() -> ResponseUrlPolicy:
    """Where a response_url may point: WeCom's host over https (the loopback simulator in tests)."""
    return ResponseUrlPolicy.of(
        settings.WECOM_RESPONSE_URL_HOSTS,
        allow_http_loopback=settings.WECOM_RESPONSE_URL_ALLOW_HTTP_LOOPBACK,
    )


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


def _turn_admit(*, bot: Bot, turn: Turn, message: InboundMessage) -> None:
    """Decide at once whether the turn is answered by the model or politely declined."""
    with _reply_language():
        if message.msgtype not in ANSWERABLE_TYPES or message.text is None:
            reason, reply = (
                "unsupported",
                _("Sorry, I can only read text for now. Please type your question."),
            )
        elif not turn.question.strip():
            reason, reply = "empty", _("Hello! What would you like to ask?")
        elif not selectors.bot_user_allowed(bot=bot, userid=message.userid):
            reason, reply = (
                "not_allowed",
                _(
                    "Sorry, you are not allowed to use this assistant. "
                    "Please contact your administrator."
                ),
            )
        elif rate_limit_exceeded(
            scope=f"bot:{bot.pk}:user:{message.userid}", limit=bot.rate_limit_per_minute
        ):
            reason, reply = (
                "rate_limited",
                _("You are asking too quickly. Please wait a minute and try again."),
            )
        else:
            reason, reply = "", ""
    if not reason:
        policies = bot_policies(bot)
        if policies:
            decision = policy_evaluate(policies=policies, text=turn.question)
            if decision.matches:
                turn.filter_decisions = [{"subject": "question", **decision.as_record()}]
                Turn.objects.filter(pk=turn.pk).update(filter_decisions=turn.filter_decisions)
            if decision.needs_review:
                review_cases_open_for_turn(
                    turn=turn, decision=decision, policies=policies, subject="question"
                )
            if decision.blocked:
                reason, reply = "policy_blocked", decision.refusal_message
    deadline = deadline_from(turn.received_at.timestamp())
    stream_owner_set(turn.stream_id, bot.pk)
    if reason:
        _turn_reject(turn=turn, reason=reason, reply=reply, deadline=deadline)
        return
    stream_state_set(turn.stream_id, StreamState(deadline=deadline))
    transaction.on_commit(lambda: turn_enqueue(turn_id=turn.pk))


def _turn_reject(*, turn: Turn, reason: str, reply: str, deadline: float) -> None:
    # A refusal text is admin-written and may exceed what one stream reply can carry.
    reply, _rest = split_at_boundary(reply, MAX_CONTENT_BYTES)
    now = timezone.now()
    Turn.objects.filter(pk=turn.pk).update(
        status=Turn.Status.REJECTED,
        rejection_reason=reason,
        answer=reply,
        finished_at=now,
        stream_closed_at=now,
    )
    turn.status, turn.rejection_reason, turn.answer = Turn.Status.REJECTED, reason, reply
    turn.finished_at = turn.stream_closed_at = now
    _turn_ledger(turn)
    stream_state_set(turn.stream_id, StreamState(content=reply, finish=True, deadline=deadline))
    logger.info("turn %s rejected: %s", turn.pk, reason)


def turn_enqueue(*, turn_id: int) -> None:
    from apps.bots.tasks import turn_generate as turn_generate_task

    Turn.objects.filter(pk=turn_id, queued_at__isnull=True).update(queued_at=timezone.now())
    turn_generate_task.delay(turn_id)


def event_handle(*, bot: Bot, event: InboundEvent) -> dict | None:
    if event.eventtype == "enter_chat":
        if not bot.welcome_message.strip():
            return None
        welcome, _rest = split_at_boundary(bot.welcome_message, MAX_CONTENT_BYTES)
        return text_reply(welcome)
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
    updated = Turn.objects.filter(bot=bot, stream_id=feedback_id).update(
        feedback=kind, feedback_detail=detail, feedback_at=timezone.now()
    )
    cache.set(seen_key, 1, timeout=24 * 3600)
    return bool(updated)


# --- stream refresh ----------------------------------------------------------------------------


def stream_refresh(*, bot: Bot, refresh: StreamRefresh) -> dict:
    """Whole content so far from Redis; closes a stream whose worker cannot make the deadline.

    Only the bot that opened a stream reads it: a refresh naming another bot's stream id
    gets the same answer as an unknown one.
    """
    owner = stream_owner_get(refresh.stream_id)
    if owner is None:  # opened before owners were stored, or long gone: ask the database
        owned = Turn.objects.filter(bot=bot, stream_id=refresh.stream_id).exists()
    else:
        owned = owner == bot.pk
    if not owned:
        logger.warning("bot %s: refresh for a stream it did not open refused", bot.slug)
        return _stream_unavailable(refresh.stream_id)
    state = stream_state_get(refresh.stream_id)
    if state is None:
        turn = Turn.objects.filter(bot=bot, stream_id=refresh.stream_id).first()
        if turn is None:
            return _stream_unavailable(refresh.stream_id)
        return stream_refresh_payload(turn)
    if not state.finish and state.deadline and now_epoch() > state.deadline + 5:
        state = _stream_close_late(bot=bot, stream_id=refresh.stream_id, state=state)
    return _stream_payload(refresh.stream_id, content=state.content, finish=state.finish)


def _stream_unavailable(stream_id: str) -> dict:
    with _reply_language():
        return stream_reply(
            stream_id=stream_id, content=_("This answer is no longer available."), finish=True
        )


def _stream_payload(stream_id: str, *, content: str, finish: bool) -> dict:
    """A stream reply; the finished one carries the stream id as WeCom's feedback id."""
    return stream_reply(
        stream_id=stream_id,
        content=content,
        finish=finish,
        feedback_id=stream_id if finish else None,
    )


def stream_refresh_payload(turn: Turn) -> dict:
    state = stream_state_get(turn.stream_id)
    if state is not None:
        return _stream_payload(turn.stream_id, content=state.content, finish=state.finish)
    if turn.is_terminal:
        content = wecom_stream_content(turn.reasoning, turn.answer, thinking_done=True)
        content, _rest = split_at_boundary(content, MAX_CONTENT_BYTES)
        return _stream_payload(turn.stream_id, content=content, finish=True)
    return _stream_payload(turn.stream_id, content="", finish=False)


def _stream_close_late(*, bot: Bot, stream_id: str, state: StreamState) -> StreamState:
    """The worker is stuck or queued past WeCom's window: finish the bubble, answer later."""
    closed = Turn.objects.filter(
        bot=bot, stream_id=stream_id, stream_closed_at__isnull=True
    ).update(stream_closed_at=timezone.now())
    if not closed:
        return stream_state_get(stream_id) or state
    with _reply_language():
        note = _("(This is taking longer than usual; the full answer will follow.)")
    state = StreamState(
        content=_with_note(state.content, note), finish=True, deadline=state.deadline
    )
    stream_state_set(stream_id, state)
    return state


def _with_note(content: str, note: str) -> str:
    head, _rest = split_at_boundary(content, MAX_CONTENT_BYTES - len(note.encode()) - 4)
    return f"{head}\n\n{note}" if head.strip() else note


# --- generating ---------------------------------------------------------------------------------


@dataclass
class _Progress:
    splitter: ThinkSplitter
    last_flush: float = 0.0
    last_heartbeat: float = 0.0
    first_token: bool = False


def turn_claim(*, turn_id: int) -> Turn | None:
    """Take the turn for this worker, or None when it is finished or another worker is alive.

    The heartbeat lease lets a redelivered task (its worker process died) take over a
    turn, while a duplicate delivery never generates the same answer twice at once.
    """
    lease = timedelta(seconds=settings.TURN_LEASE_SECONDS)
    deadline = time.monotonic() + settings.TURN_LEASE_SECONDS + 5
    while True:
        now = timezone.now()
        claimed = (
            Turn.objects.filter(pk=turn_id)
            .filter(
                Q(status=Turn.Status.QUEUED)
                | Q(status=Turn.Status.GENERATING, heartbeat_at__lt=now - lease)
                | Q(status=Turn.Status.GENERATING, heartbeat_at__isnull=True)
            )
            .update(status=Turn.Status.GENERATING, attempts=F("attempts") + 1, heartbeat_at=now)
        )
        turn = (
            Turn.objects.select_related("bot__model_profile", "conversation")
            .filter(pk=turn_id)
            .first()
        )
        if turn is None or turn.is_terminal:
            return None
        if claimed:
            return turn
        if time.monotonic() > deadline:
            logger.info("turn %s is being answered by another worker", turn_id)
            return None
        time.sleep(0.5)


def turn_generate(*, turn_id: int) -> None:
    """Stream the model's answer into Redis, then finish the stream (or use response_url)."""
    turn = turn_claim(turn_id=turn_id)
    if turn is None:
        return
    if turn.attempts > settings.TURN_MAX_ATTEMPTS:
        turn_fail(turn=turn, error=f"gave up after {turn.attempts - 1} attempts")
        return
    bot = turn.bot
    deadline = deadline_from(turn.received_at.timestamp())
    progress = _Progress(splitter=ThinkSplitter())
    policies = bot_policies(bot)
    guard = policy_stream_guard(policies=policies) if policies else None
    flusher = StreamFlusher(
        turn_id=turn.pk,
        stream_id=turn.stream_id,
        deadline=deadline,
        interval=settings.WECOM_STREAM_FLUSH_SECONDS,
    )
    try:
        engine = profile_engine(profile=bot.model_profile)
        mask = _masker(policies)
        messages = selectors.conversation_messages(turn=turn, mask=mask)
        hits = _knowledge_hits(turn=turn, question=messages[-1]["content"])
        if hits is not None:
            messages = (
                *messages[:-1],
                {"role": "user", "content": _grounded(turn, messages, hits)},
            )
        request = ChatRequest(
            messages=messages,
            sampling=bot.sampling(),
            deadline=time.monotonic() + settings.TURN_GENERATION_TIMEOUT_SECONDS,
        )
        generation = engine.submit(request)
        raw: list[str] = []
        with _QueueNotice(
            generation=generation,
            engine=engine,
            threshold=bot.queue_notice_seconds,
            flusher=flusher,
        ) as notice:
            for piece in generation:
                notice.stop()
                raw.append(piece)
                if guard is not None:
                    # Only text no block/mask rule can still match reaches WeCom: a blocked
                    # word is never streamed out and then retracted.
                    piece = guard.feed(piece)
                    if guard.blocked:
                        generation.cancel()
                        break
                progress.splitter.feed(piece)
                _turn_progress(turn=turn, progress=progress, deadline=deadline, flusher=flusher)
        if guard is not None and not guard.blocked:
            progress.splitter.feed(guard.finish())
        progress.splitter.finish()
        stats = generation.stats
    except EngineError as exc:
        _flusher_stop(flusher)
        turn_fail(turn=turn, error=str(exc))
        return
    except Exception as exc:
        _flusher_stop(flusher)
        logger.exception("turn %s failed while generating", turn.pk)
        turn_fail(turn=turn, error=f"{type(exc).__name__}: {exc}")
        return
    _flusher_stop(flusher)
    turn.prompt_tokens = stats.prompt_tokens
    turn.completion_tokens = stats.completion_tokens
    if guard is not None:
        if guard.decision is None:
            guard.finish()  # blocked mid-stream: evaluate the whole text for the record
        decision = guard.decision
        assert decision is not None
        if decision.matches:
            turn.filter_decisions = [
                *turn.filter_decisions,
                {"subject": "answer", **decision.as_record()},
            ]
        if decision.needs_review:
            review_cases_open_for_turn(turn=turn, decision=decision, policies=policies)
        if guard.blocked:
            turn.withheld_answer = "".join(raw)
            turn_finish(turn=turn, reasoning="", answer=guard.refusal_message)
            return
    if stats.finish_reason in {"error", "cancelled"}:
        turn_fail(turn=turn, error=f"generation ended: {stats.finish_reason}")
        return
    answer = progress.splitter.answer
    if hits:
        turn.sources = [_source_record(hit) for hit in hits]
        with _reply_language():
            answer = f"{answer.rstrip()}\n\n{sources_footer(hits=hits)}"
    turn_finish(turn=turn, reasoning=progress.splitter.reasoning, answer=answer)


class _QueueNotice:
    """Tells a waiting employee their place in line while every model slot is busy.

    Runs beside the decode loop, which blocks until the first token: when the expected
    wait (waited so far plus the engine's estimate) passes the bot's threshold, the
    stream shows "queued, position N" and follows the position. `stop()` on the first
    token joins the thread, so the notice can never overwrite the answer.
    """

    POLL_SECONDS = 0.5

    def __init__(
        self, *, generation: Generation, engine: Engine, threshold: float, flusher: StreamFlusher
    ) -> None:
        self._generation = generation
        self._engine = engine
        self._threshold = threshold
        self._flusher = flusher
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _QueueNotice:
        if self._generation.queue_position > 0:
            self._thread = threading.Thread(target=self._run, name="queue-notice", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopped.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        started = time.monotonic()
        shown = 0
        while True:
            position = self._generation.queue_position
            if position <= 0:
                return
            load = self._engine.load()
            # With a slot free the request is admitted at the next decode step: no notice.
            busy = load.running >= load.slots
            expected = time.monotonic() - started + load.estimated_wait_seconds
            if busy and position != shown and expected > self._threshold:
                shown = position
                with _reply_language():
                    self._flusher.update(
                        _(
                            "All answer slots are busy: you are number %(position)s in the "
                            "queue. Your answer starts as soon as a slot frees up."
                        )
                        % {"position": position}
                    )
            if self._stopped.wait(self.POLL_SECONDS):
                return


def _flusher_stop(flusher: StreamFlusher) -> None:
    flusher.close_stream()
    flusher.stop()


def _turn_progress(
    *, turn: Turn, progress: _Progress, deadline: float, flusher: StreamFlusher
) -> None:
    now = time.monotonic()
    if not progress.first_token:
        progress.first_token = True
        turn.first_token_at = timezone.now()
        Turn.objects.filter(pk=turn.pk).update(first_token_at=turn.first_token_at)
    if now - progress.last_heartbeat >= 2.0:
        progress.last_heartbeat = now
        Turn.objects.filter(pk=turn.pk).update(heartbeat_at=timezone.now())
    if now - progress.last_flush < settings.WECOM_STREAM_FLUSH_SECONDS / 2:
        return
    progress.last_flush = now
    splitter = progress.splitter
    content = wecom_stream_content(
        splitter.reasoning, splitter.answer, thinking_done=not splitter.in_think
    )
    if turn.stream_closed_at is None and now_epoch() > deadline:
        flusher.close_stream()
        _stream_close_for_deadline(turn=turn, content=content, deadline=deadline)
    flusher.update(content)


def _stream_close_for_deadline(*, turn: Turn, content: str, deadline: float) -> None:
    now = timezone.now()
    if Turn.objects.filter(pk=turn.pk, stream_closed_at__isnull=True).update(stream_closed_at=now):
        with _reply_language():
            note = _("(This answer is long; the complete answer will follow in a new message.)")
        stream_state_set(
            turn.stream_id,
            StreamState(content=_with_note(content, note), finish=True, deadline=deadline),
        )
    turn.stream_closed_at = now


def turn_finish(*, turn: Turn, reasoning: str, answer: str) -> None:
    """Deliver the final answer: the stream when it fits and is open, response_url for the rest."""
    reasoning, answer = reasoning.strip(), answer.strip()
    if not answer:
        with _reply_language():
            answer = _("Sorry, I could not come up with an answer. Please rephrase your question.")
    deadline = deadline_from(turn.received_at.timestamp())
    now = timezone.now()
    won_stream = bool(
        Turn.objects.filter(pk=turn.pk, stream_closed_at__isnull=True).update(stream_closed_at=now)
    )
    rest = ""
    error = ""
    with _reply_language():
        continued = _("(continued in the next message)")
    if won_stream:
        shown_reasoning = reasoning
        if len(reasoning.encode()) > MAX_CONTENT_BYTES // 2:
            # Reasoning is stored in full; the bubble shows its beginning only.
            shown_reasoning, _cut = split_at_boundary(reasoning, MAX_CONTENT_BYTES // 2)
            shown_reasoning += "…"
        think_block = wecom_stream_content(shown_reasoning, "", thinking_done=True)
        budget = MAX_CONTENT_BYTES - len(think_block.encode()) - _NOTE_RESERVE
        head, rest = split_at_boundary(answer, budget)
        content = wecom_stream_content(shown_reasoning, head.rstrip(), thinking_done=True)
        if rest:
            content = f"{content}\n\n{continued}"
        stream_state_set(
            turn.stream_id, StreamState(content=content, finish=True, deadline=deadline)
        )
    else:
        rest = answer
    if rest:
        error = _response_url_deliver(turn=turn, content=rest)
    with transaction.atomic():
        Turn.objects.filter(pk=turn.pk).update(
            status=Turn.Status.ANSWERED,
            answer=answer,
            reasoning=reasoning,
            withheld_answer=turn.withheld_answer,
            filter_decisions=turn.filter_decisions,
            sources=turn.sources,
            prompt_tokens=turn.prompt_tokens,
            completion_tokens=turn.completion_tokens,
            finished_at=timezone.now(),
            error=error,
        )
        turn.refresh_from_db()
        _turn_ledger(turn)
    stream_publish(turn.pk, content=answer, finish=True, status=Turn.Status.ANSWERED)


def _response_url_take(*, turn: Turn) -> tuple[str, str]:
    """Claim the turn's response_url once: `(url, "")`, or `("", why not)`.

    The URL is a bearer capability, so the row forgets it as it is taken (or found
    expired): it is used at most once and never lies around to be read later.
    """
    now = timezone.now()
    with transaction.atomic():
        row = (
            Turn.objects.select_for_update()
            .filter(pk=turn.pk)
            .values("response_url", "response_url_used_at", "received_at")
            .first()
        )
        if row is None or row["response_url_used_at"] is not None:
            return "", "response_url already used"
        if not row["response_url"]:
            return "", "answer longer than the stream allows, and WeCom gave no response_url"
        if row["received_at"] < now - RESPONSE_URL_VALID:
            Turn.objects.filter(pk=turn.pk).update(response_url="")
            return "", "response_url expired (WeCom accepts it for one hour)"
        Turn.objects.filter(pk=turn.pk).update(response_url="", response_url_used_at=now)
    turn.response_url, turn.response_url_used_at = "", now
    return row["response_url"], ""


def _response_url_deliver(*, turn: Turn, content: str) -> str:
    """POST once to response_url; returns an error description for admins, '' on success."""
    url, problem = _response_url_take(turn=turn)
    if problem:
        return problem
    head, rest = split_at_boundary(content, MAX_CONTENT_BYTES - _NOTE_RESERVE)
    error = ""
    if rest:
        with _reply_language():
            head = f"{head}\n\n" + _("(The answer was cut here: it exceeds WeCom's message size.)")
        error = f"{len(rest.encode())} bytes beyond two WeCom messages were not delivered"
    try:
        post_response_url(
            url,
            {"msgtype": "markdown", "markdown": {"content": head}},
            policy=response_url_policy(),
        )
    except ResponseUrlError as exc:
        logger.warning("turn %s: response_url delivery failed: %s", turn.pk, exc)
        return f"response_url delivery failed: {exc}"
    return error


def turn_fail(*, turn: Turn, error: str) -> None:
    """End the turn as failed: the user sees a short apology, admins see the error."""
    with _reply_language():
        apology = _("Sorry, something went wrong while answering. Please try again later.")
    deadline = deadline_from(turn.received_at.timestamp())
    if Turn.objects.filter(pk=turn.pk, stream_closed_at__isnull=True).update(
        stream_closed_at=timezone.now()
    ):
        stream_state_set(
            turn.stream_id, StreamState(content=apology, finish=True, deadline=deadline)
        )
    else:
        _response_url_deliver(turn=turn, content=apology)
    with transaction.atomic():
        failed = (
            Turn.objects.filter(pk=turn.pk)
            .exclude(status__in=Turn.TERMINAL)
            .update(status=Turn.Status.FAILED, error=error[:4000], finished_at=timezone.now())
        )
        if failed:
            turn.refresh_from_db()
            _turn_ledger(turn)
    stream_publish(turn.pk, content=apology, finish=True, status=Turn.Status.FAILED)
    logger.warning("turn %s failed: %s", turn.pk, error)


def turns_sweep() -> int:
    """Fail turns nobody is answering any more, so every turn reaches a terminal state."""
    now = timezone.now()
    stale_queue = now - timedelta(seconds=settings.TURN_GENERATION_TIMEOUT_SECONDS)
    stale_heartbeat = now - timedelta(seconds=max(60.0, settings.TURN_LEASE_SECONDS * 4))
    stale = Turn.objects.filter(
        Q(status=Turn.Status.QUEUED, received_at__lt=stale_queue)
        | Q(status=Turn.Status.GENERATING, heartbeat_at__lt=stale_heartbeat)
    )
    count = 0
    for turn in stale.select_related("bot"):
        turn_fail(turn=turn, error="no worker finished this turn in time")
        count += 1
    # WeCom no longer accepts these; a stored one is only a capability waiting to leak.
    Turn.objects.filter(received_at__lt=now - RESPONSE_URL_VALID).exclude(response_url="").update(
        response_url=""
    )
    return count


def _knowledge_hits(*, turn: Turn, question: str) -> list[Hit] | None:
    """Passages all readers of the answer may read, or None when the bot has no knowledge base.

    The permission filter runs inside the search query, so a restricted passage never
    reaches the prompt of someone not allowed to read it.
    """
    kb_ids = list(turn.bot.knowledge_bases.values_list("pk", flat=True))
    if not kb_ids:
        return None
    conversation = turn.conversation
    return knowledge_retrieve(
        bot_kb_ids=kb_ids,
        # In a group every member reads the answer: passages must be open to all of them.
        readers=chat_readers(
            userid=conversation.userid,
            chat_id=conversation.chat_id,
            group=conversation.chat_type == Conversation.ChatType.GROUP,
        ),
        query=question,
        top_k=turn.bot.retrieval_top_k,
    )


def _grounded(turn: Turn, messages: tuple[dict[str, str], ...], hits: list[Hit]) -> str:
    bot = turn.bot
    only_sources = (
        bot.answer_only_from_sources
        or bot.knowledge_bases.filter(answer_only_from_sources=True).exists()
    )
    with _reply_language():
        return prompt_with_passages(
            question=messages[-1]["content"], hits=hits, answer_only_from_sources=only_sources
        )


def _source_record(hit: Hit) -> dict[str, Any]:
    return {
        "chunk": hit.chunk_id,
        "document": hit.document_id,
        "document_version": hit.document_version,
        "file": hit.document,
        "title": hit.title,
        "heading": hit.heading,
        "knowledge_base": hit.knowledge_base,
        "score": hit.score,
    }


def bot_policies(bot: Bot) -> list[AuditPolicy]:
    return list(bot.audit_policies.filter(enabled=True).order_by("pk"))


def _masker(policies: list[AuditPolicy]) -> Callable[[str], str] | None:
    """What the model sees of employees' questions: masked where a policy says mask."""
    if not policies:
        return None
    return lambda text: policy_evaluate(policies=policies, text=text).masked_text


def _turn_ledger(turn: Turn) -> None:
    """Append the finished turn to the hash-chained ledger (same transaction as its status)."""
    ledger_record_turn(
        turn=turn,
        decisions=turn.filter_decisions,
        delivery={
            "stream_closed_at": turn.stream_closed_at.isoformat()
            if turn.stream_closed_at
            else None,
            "response_url_used_at": turn.response_url_used_at.isoformat()
            if turn.response_url_used_at
            else None,
            "error": turn.error[:500],
        },
    )


def engines_warm() -> int:
    """Load the models of enabled bots, so the first question after a restart is not slow."""
    loaded = 0
    for profile in ModelProfile.objects.filter(bots__enabled=True).distinct():
        try:
            profile_engine(profile=profile)
            loaded += 1
        except EngineError as exc:
            logger.error("model profile %s cannot be loaded: %s", profile.name, exc)
    return loaded

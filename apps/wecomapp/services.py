"""The self-built app door: a callback becomes a turn, an ended turn's answer is sent.

The callback only records the turn (through the bots' one entry, `mention_receive`) and
which app and member it came from; WeCom is answered empty at once. When the turn ends the
push outbox calls `app_turn_push`, which sends the answer (or the apology) in numbered
parts through `message/send`, continuing after the parts already sent.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.audit.services.operator_audit import operator_audit_record
from apps.bots.models import Turn
from apps.bots.services.push import PushError
from apps.bots.services.receive import mention_receive
from apps.bots.services.stream import reply_language
from apps.core.tokens import token_store
from apps.wecomapp.models import AppDelivery, WeComApp
from wecom.app import AppApiError, AppCallback, AppClient, message_parts
from wecom.messages import InboundMessage

logger = logging.getLogger(__name__)

# Message ids of this door are prefixed so they never meet another door's in one bot.
MSGID_PREFIX = "app:"


def app_client(*, app: WeComApp) -> AppClient:
    return AppClient(
        base_url=settings.WECOM_API_BASE,
        corp_id=app.corp_id,
        secret=app.secret,
        agent_id=app.agent_id,
        store=token_store(),
    )


def app_nonce_remember(*, app: WeComApp, timestamp: str, nonce: str, key: str) -> bool:
    """Remember a signed (timestamp, nonce) pair; False when it comes back on another message.

    WeCom retrying one callback repeats the pair with the same message, which the msgid
    dedup already makes harmless.
    """
    cache_key = f"wecom-app-nonce:{app.pk}:{timestamp}:{nonce}"
    window = 2 * settings.WECOM_CALLBACK_MAX_SKEW_SECONDS
    if cache.add(cache_key, key, timeout=window):
        return True
    return cache.get(cache_key) == key


def app_callback_receive(
    *, app: WeComApp, callback: AppCallback, received_at: datetime
) -> Turn | None:
    """Record a member's message as a turn of the app's bot, once per MsgId; events: None.

    The delivery row is written in the same transaction as the turn, so the push that the
    turn's end enqueues after the commit always finds where the answer goes.
    """
    if callback.msgtype == "event":
        logger.info("app %s: event %s from %s", app.slug, callback.event, callback.from_user)
        return None
    message = InboundMessage(
        msgid=f"{MSGID_PREFIX}{callback.msgid}",
        aibotid="",
        chatid=None,
        chattype="single",  # apps cannot receive group messages
        userid=callback.from_user,
        response_url=None,
        msgtype=callback.msgtype,
        text=callback.content,
        image_urls=(),
        quote=None,
        raw=callback.raw,
    )
    with transaction.atomic():
        turn = mention_receive(
            bot=app.bot, message=message, received_at=received_at, channel=Turn.Channel.APP
        )
        _delivery, created = AppDelivery.objects.get_or_create(
            turn=turn, defaults={"app": app, "touser": callback.from_user}
        )
        if created and not turn.is_terminal and app.thinking_notice_seconds:
            turn_id, delay = turn.pk, app.thinking_notice_seconds
            transaction.on_commit(lambda: _thinking_notice_enqueue(turn_id=turn_id, delay=delay))
    return turn


def _thinking_notice_enqueue(*, turn_id: int, delay: float) -> None:
    from apps.wecomapp.tasks import app_thinking_notice

    app_thinking_notice.apply_async(args=(turn_id,), countdown=delay)


def app_thinking_notice(*, turn_id: int) -> bool:
    """Tell the member the answer is coming when the model has not started after a while.

    Without a stream the member otherwise sees nothing until the whole answer is sent.
    Sent at most once, and never once the first token (or the end) is there.
    """
    delivery = AppDelivery.objects.select_related("turn", "app").filter(turn_id=turn_id).first()
    if delivery is None or delivery.notice_sent_at is not None:
        return False
    turn = delivery.turn
    if turn.is_terminal or turn.first_token_at is not None:
        return False
    claimed = AppDelivery.objects.filter(pk=delivery.pk, notice_sent_at__isnull=True).update(
        notice_sent_at=timezone.now()
    )
    if not claimed:
        return False
    with reply_language():
        content = _("Thinking… the answer follows shortly.")
    client = app_client(app=delivery.app)
    try:
        client.message_send(touser=delivery.touser, content=content, markdown=False)
    except AppApiError as exc:
        logger.info("turn %s: thinking notice not sent: %s", turn_id, exc)
        return False
    finally:
        client.close()
    return True


def app_turn_text(*, turn: Turn) -> str:
    """What the member receives: the answer (with its sources), the refusal, or an apology."""
    if turn.status == Turn.Status.FAILED or not turn.answer.strip():
        with reply_language():
            return _("Sorry, something went wrong while answering. Please try again later.")
    return turn.answer


def app_turn_push(turn: Turn) -> None:
    """The push outbox's sender for the app channel: every part not yet sent, in order."""
    delivery = AppDelivery.objects.select_related("app").filter(turn=turn).first()
    if delivery is None:
        raise PushError(None, "no app delivery recorded for this turn")
    app = delivery.app
    parts = message_parts(app_turn_text(turn=turn), limit_bytes=app.message_max_bytes)
    client = app_client(app=app)
    try:
        for index in range(delivery.parts_sent, len(parts)):
            client.message_send(touser=delivery.touser, content=parts[index], markdown=app.markdown)
            delivery.part_sent(index=index)
    except AppApiError as exc:
        raise PushError(exc.errcode, exc.errmsg, retryable=exc.retryable) from exc
    finally:
        client.close()


def app_test_message_send(*, app: WeComApp, actor: Any, request_id: str = "") -> None:
    """Send a fixed message to the app's test recipient, and audit that it was sent.

    Raises AppApiError with WeCom's errcode when WeCom refuses (wrong secret, untrusted
    IP, unknown member), which the admin shows as it is.
    """
    if not app.test_userid:
        raise AppApiError(None, _("Set the test recipient first."))
    with reply_language():
        content = _("Test message from %(app)s: the app can send messages.") % {"app": app.name}
    client = app_client(app=app)
    try:
        client.message_send(touser=app.test_userid, content=content, markdown=False)
    finally:
        client.close()
    operator_audit_record(
        actor=actor,
        action="wecomapp.wecomapp.test_message",
        obj=app,
        after={"touser": app.test_userid},
        request_id=request_id,
        only_changes=False,
    )

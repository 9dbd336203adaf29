"""The long-connection door into the turn pipeline, and the connector's lease and state rows.

The connector process (`apps.bots.connector`) holds the sockets; everything it asks of the
database goes through here. An inbound message goes through the same `mention_receive` as
a callback (dedup by msgid, policies, knowledge, ledger, rate limits, admission); the
answer's frames are read from the same Redis stream state the worker writes for callbacks.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from apps.bots.models import Bot, Conversation, LongConnection, Turn
from apps.bots.services.receive import event_handle, mention_receive
from apps.bots.services.stream import stream_refresh_payload
from apps.bots.services.welcome import card_click_receive
from apps.bots.streams import stream_state_get
from wecom.messages import (
    MAX_CONTENT_BYTES,
    InboundEvent,
    InboundMessage,
    MalformedMessage,
    parse_callback,
    split_at_boundary,
)

logger = logging.getLogger(__name__)

# WeCom accepts replies under a callback's req_id for 24 hours (doc 101463).
REPLY_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class LongConnBot:
    """What a connector needs to hold one bot; `fingerprint` changes when it must reconnect."""

    pk: int
    slug: str
    bot_id: str
    secret: str
    fingerprint: str


@dataclass(frozen=True)
class ForwardJob:
    """An answer to push as stream frames under the callback's req_id."""

    turn_id: int
    req_id: str
    stream_id: str
    conversation_key: str


@dataclass(frozen=True)
class RestPush:
    """The part of an answer the stream could not carry, as `aibot_send_msg` messages."""

    chatid: str = ""
    chat_type: Literal[1, 2] = 1
    parts: list[str] = field(default_factory=list)
    pending: bool = False  # the stream ended (deadline) but the answer is still being written


@dataclass(frozen=True)
class Welcome:
    body: dict[str, Any]


def longconn_bots() -> list[LongConnBot]:
    """Enabled long-connection bots with usable credentials."""
    bots = Bot.objects.filter(
        enabled=True, connection_mode=Bot.ConnectionMode.LONG_CONNECTION
    ).exclude(aibotid="")
    result = []
    for bot in bots:
        if not bot.longconn_secret:  # missing, or undecryptable (reads as empty)
            continue
        digest = hashlib.sha256(
            f"{bot.aibotid}\0{bot.longconn_secret}\0{bot.updated_at.isoformat()}".encode()
        ).hexdigest()
        result.append(LongConnBot(bot.pk, bot.slug, bot.aibotid, bot.longconn_secret, digest))
    return result


def longconn_lease_take(*, bot_id: int, holder: str, ttl: float) -> bool:
    LongConnection.objects.get_or_create(bot_id=bot_id)
    return LongConnection.objects.lease_take(
        bot_id=bot_id, holder=holder, now=timezone.now(), ttl=timedelta(seconds=ttl)
    )


def longconn_lease_release(*, bot_id: int, holder: str) -> None:
    LongConnection.objects.lease_release(bot_id=bot_id, holder=holder)


def longconn_state_save(*, bot_id: int, holder: str, state: dict[str, Any]) -> None:
    """Write what the bot page shows; only the lease holder speaks for the connection."""

    def when(key: str) -> datetime | None:
        value = state.get(key)
        return parse_datetime(value) if isinstance(value, str) else None

    LongConnection.objects.filter(bot_id=bot_id, holder=holder).update(
        phase=str(state.get("phase", "")),
        connected_since=when("connected_since"),
        last_message_at=when("last_message_at"),
        last_error=str(state.get("last_error") or ""),
        last_error_at=when("last_error_at"),
        state_at=timezone.now(),
    )


def _conversation_key(message: InboundMessage | InboundEvent) -> str:
    return message.chatid or message.userid


def longconn_callback_receive(
    *, bot_id: int, body: dict[str, Any], req_id: str, received_at: datetime
) -> ForwardJob | Welcome | None:
    """Feed one `aibot_msg_callback` / `aibot_event_callback` into the turn pipeline.

    Returns what the connector must send: the answer to forward, a welcome, or nothing.
    """
    bot = Bot.objects.select_related("model_profile").filter(pk=bot_id, enabled=True).first()
    if bot is None or not bot.uses_long_connection:
        return None
    try:
        callback = parse_callback(body)
    except MalformedMessage as exc:
        logger.warning("bot %s: malformed long-connection callback: %s", bot.slug, exc)
        return None
    if isinstance(callback, InboundEvent) and callback.eventtype == "template_card_event":
        turn = card_click_receive(
            bot=bot, event=callback, received_at=received_at, longconn_req_id=req_id
        )
        if turn is None or turn.longconn_delivered_at is not None or not turn.longconn_req_id:
            return None
        return ForwardJob(
            turn.pk, turn.longconn_req_id, turn.stream_id, _conversation_key(callback)
        )
    if isinstance(callback, InboundEvent):
        payload = event_handle(bot=bot, event=callback)
        if payload is not None and callback.eventtype == "enter_chat":
            return Welcome(payload)
        return None
    if not isinstance(callback, InboundMessage):
        return None  # no stream refreshes on the long connection
    turn = mention_receive(
        bot=bot, message=callback, received_at=received_at, longconn_req_id=req_id
    )
    if turn.longconn_delivered_at is not None or not turn.longconn_req_id:
        return None  # a redelivery of an answered message, or one that came by callback
    return ForwardJob(turn.pk, turn.longconn_req_id, turn.stream_id, _conversation_key(callback))


def longconn_undelivered(*, bot_id: int) -> list[ForwardJob]:
    """Answers a previous holder (or this one, before a reconnect) had not finished sending."""
    turns = (
        Turn.objects.longconn_undelivered(bot_id=bot_id, since=timezone.now() - REPLY_WINDOW)
        .select_related("conversation")
        .order_by("received_at")
    )
    return [
        ForwardJob(
            t.pk,
            t.longconn_req_id,
            t.stream_id,
            t.conversation.chat_id or t.conversation.userid,
        )
        for t in turns
    ]


def longconn_stream_snapshot(*, turn_id: int, stream_id: str) -> tuple[str, bool]:
    """(whole content so far, finished): the Redis state, or the row once that expired."""
    state = stream_state_get(stream_id)
    if state is not None:
        return state.content, state.finish
    turn = Turn.objects.filter(pk=turn_id).first()
    if turn is None:
        return "", True
    stream = stream_refresh_payload(turn)["stream"]
    return str(stream.get("content", "")), bool(stream.get("finish"))


def longconn_is_delivered(*, turn_id: int) -> bool:
    return Turn.objects.filter(pk=turn_id, longconn_delivered_at__isnull=False).exists()


def longconn_delivered(*, turn_id: int) -> bool:
    return bool(Turn.objects.filter(pk=turn_id).longconn_delivered(now=timezone.now()))


def longconn_rest(*, turn_id: int) -> RestPush:
    """What follows the stream's end (cut by the length limit or the deadline); no parts if none.

    `pending` while the turn is still open: a stream closed at its deadline ends before
    the answer does. Split at paragraph or sentence boundaries into messages of WeCom's
    content limit, for the chat the question came from.
    """
    turn = Turn.objects.select_related("conversation").filter(pk=turn_id).first()
    if turn is not None and not turn.is_terminal:
        return RestPush(pending=True)
    if turn is None or not turn.longconn_rest:
        return RestPush()
    conversation = turn.conversation
    group = conversation.chat_type == Conversation.ChatType.GROUP
    parts, rest = [], turn.longconn_rest
    while rest:
        head, rest = split_at_boundary(rest, MAX_CONTENT_BYTES)
        parts.append(head)
    return RestPush(
        chatid=conversation.chat_id if group else conversation.userid,
        chat_type=2 if group else 1,
        parts=parts,
    )

"""What WeCom's stream refreshes see: the content so far from Redis, closed before WeCom gives up.

A refresh never waits for the model: the worker writes the stream state, the callback
view only reads it, and closes a stream whose worker cannot make WeCom's deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

from django.conf import settings
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from redis.exceptions import RedisError

from apps.bots.models import Bot, Turn
from apps.bots.streams import (
    StreamState,
    now_epoch,
    stream_owner_get,
    stream_state_get,
    stream_state_set,
)
from wecom.display import wecom_stream_content
from wecom.messages import MAX_CONTENT_BYTES, StreamRefresh, split_at_boundary, stream_reply

logger = logging.getLogger(__name__)

T = TypeVar("T")


def reply_language() -> translation.override:
    """Replies to employees are in the deployment's WeCom language, whoever triggered them."""
    return translation.override(settings.WECOM_REPLY_LANGUAGE)


def stream_refresh(*, bot: Bot, refresh: StreamRefresh) -> dict:
    """Whole content so far from Redis; closes a stream whose worker cannot make the deadline.

    Only the bot that opened a stream reads it: a refresh naming another bot's stream id
    gets the same answer as an unknown one.
    """
    owner = _redis_or_none(stream_owner_get, refresh.stream_id)
    if owner is None:  # opened before owners were stored, or long gone: ask the database
        owned = Turn.objects.filter(bot=bot, stream_id=refresh.stream_id).exists()
    else:
        owned = owner == bot.pk
    if not owned:
        logger.warning("bot %s: refresh for a stream it did not open refused", bot.slug)
        return _stream_unavailable(refresh.stream_id)
    state = _redis_or_none(stream_state_get, refresh.stream_id)
    if state is None or not state.finish:
        # Redis may have lost the end (an outage as the answer finished): an ended turn
        # is served from the database, so its bubble always ends.
        ended = Turn.objects.filter(
            bot=bot, stream_id=refresh.stream_id, status__in=Turn.TERMINAL
        ).first()
        if ended is not None:
            return stream_ended_payload(ended)
    if state is None:
        turn = Turn.objects.filter(bot=bot, stream_id=refresh.stream_id).first()
        if turn is None:
            return _stream_unavailable(refresh.stream_id)
        return stream_refresh_payload(turn)
    if not state.finish and state.deadline and now_epoch() > state.deadline + 5:
        state = _stream_close_late(bot=bot, stream_id=refresh.stream_id, state=state)
    return _stream_payload(refresh.stream_id, content=state.content, finish=state.finish)


def _redis_or_none(read: Callable[[str], T], stream_id: str) -> T | None:
    """A read that a Redis outage turns into "not there": the database answers instead."""
    try:
        return read(stream_id)
    except (RedisError, OSError):
        logger.warning("stream %s: Redis unavailable, reading the database", stream_id)
        return None


def stream_ended_payload(turn: Turn) -> dict:
    """The last state of an ended turn, built from its row alone."""
    if turn.status == Turn.Status.FAILED:
        with reply_language():
            content = _("Sorry, something went wrong while answering. Please try again later.")
    else:
        content = wecom_stream_content(turn.reasoning, turn.answer, thinking_done=True)
        content, _rest = split_at_boundary(content, MAX_CONTENT_BYTES)
    return _stream_payload(turn.stream_id, content=content, finish=True)


def _stream_unavailable(stream_id: str) -> dict:
    with reply_language():
        return stream_reply(
            stream_id=stream_id, content=_("This answer is no longer available."), finish=True
        )


def _stream_payload(
    stream_id: str, *, content: str, finish: bool, first_reply: bool = False
) -> dict:
    """A stream reply carrying the stream id as WeCom's feedback id on the first reply.

    WeCom's SDKs set `feedback.id` on the first reply only ("仅在首次回复时设置"), so an
    answer that never finishes still gets its 👍/👎 buttons; the finished one keeps it too.
    """
    return stream_reply(
        stream_id=stream_id,
        content=content,
        finish=finish,
        feedback_id=stream_id if finish or first_reply else None,
    )


def stream_refresh_payload(turn: Turn, *, first_reply: bool = False) -> dict:
    state = _redis_or_none(stream_state_get, turn.stream_id)
    if state is not None:
        return _stream_payload(
            turn.stream_id, content=state.content, finish=state.finish, first_reply=first_reply
        )
    if turn.is_terminal:
        content = wecom_stream_content(turn.reasoning, turn.answer, thinking_done=True)
        content, _rest = split_at_boundary(content, MAX_CONTENT_BYTES)
        return _stream_payload(
            turn.stream_id, content=content, finish=True, first_reply=first_reply
        )
    return _stream_payload(turn.stream_id, content="", finish=False, first_reply=first_reply)


def _stream_close_late(*, bot: Bot, stream_id: str, state: StreamState) -> StreamState:
    """The worker is stuck or queued past WeCom's window: finish the bubble now.

    "The full answer will follow" only when a worker is really generating (its lease is
    fresh); a turn nobody works on gets its apology in the bubble instead.
    """
    turn = Turn.objects.filter(bot=bot, stream_id=stream_id).first()
    if turn is not None and not _generating(turn):
        from apps.bots.services.deliver import turn_fail

        turn_fail(turn=turn, error="not answered within WeCom's stream window", shown=state.content)
        return stream_state_get(stream_id) or state
    closed = Turn.objects.filter(bot=bot, stream_id=stream_id).close_stream(now=timezone.now())
    if not closed:
        return stream_state_get(stream_id) or state
    with reply_language():
        note = _("(This is taking longer than usual; the full answer will follow.)")
    state = StreamState(
        content=with_note(state.content, note), finish=True, deadline=state.deadline
    )
    stream_state_set(stream_id, state)
    return state


def _generating(turn: Turn) -> bool:
    lease = timedelta(seconds=settings.TURN_LEASE_SECONDS)
    beat = turn.heartbeat_at
    return (
        turn.status == Turn.Status.GENERATING and beat is not None and timezone.now() - beat < lease
    )


def stream_close_for_deadline(*, turn: Turn, content: str, deadline: float) -> None:
    """A long answer cannot finish before WeCom stops refreshing: end the bubble with a note."""
    if turn.close_stream():
        with reply_language():
            note = _("(This answer is long; the complete answer will follow in a new message.)")
        stream_state_set(
            turn.stream_id,
            StreamState(content=with_note(content, note), finish=True, deadline=deadline),
        )


def with_note(content: str, note: str) -> str:
    head, _rest = split_at_boundary(content, MAX_CONTENT_BYTES - len(note.encode()) - 4)
    return f"{head}\n\n{note}" if head.strip() else note

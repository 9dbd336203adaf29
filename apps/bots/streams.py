"""Live stream state: what WeCom's refresh callbacks see, kept in Redis, mirrored to Channels.

A stream's state is the whole content so far (refreshes replace, they never append) and a
finish flag. The Celery worker writes it (throttled); the callback view only reads it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamState:
    content: str = ""
    finish: bool = False
    # Epoch seconds after which WeCom stops polling; the stream must be finished before.
    deadline: float = 0.0


def _key(stream_id: str) -> str:
    return f"stream:{stream_id}"


def stream_state_get(stream_id: str) -> StreamState | None:
    raw = cache.get(_key(stream_id))
    if not isinstance(raw, dict):
        return None
    return StreamState(
        content=str(raw.get("content", "")),
        finish=bool(raw.get("finish", False)),
        deadline=float(raw.get("deadline", 0.0)),
    )


def stream_state_set(stream_id: str, state: StreamState) -> None:
    cache.set(_key(stream_id), asdict(state), timeout=settings.WECOM_STREAM_TTL_SECONDS)


def turn_group(turn_id: int) -> str:
    return f"turn.{turn_id}"


def stream_publish(turn_id: int, *, content: str, finish: bool, status: str) -> None:
    """Tell admins watching the turn live; losing an update is harmless, so never raise."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            turn_group(turn_id),
            {"type": "turn.update", "content": content, "finish": finish, "status": status},
        )
    except Exception:  # a Redis hiccup must not fail the answer itself
        logger.warning("could not publish turn %s to the channel layer", turn_id, exc_info=True)


def deadline_from(received_epoch: float) -> float:
    return received_epoch + settings.WECOM_STREAM_DEADLINE_SECONDS


def now_epoch() -> float:
    return time.time()

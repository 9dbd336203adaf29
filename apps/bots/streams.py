"""Live stream state: what WeCom's refresh callbacks see, kept in Redis, mirrored to Channels.

A stream's state is the whole content so far (refreshes replace, they never append) and a
finish flag. The Celery worker writes it (throttled); the callback view only reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

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


# Writes an open (unfinished) state unless the stored one is already finished, in one step
# on the Redis server: a partial flushed late can never reopen a bubble that another
# process (the refresh closing a late stream, the sweeper's apology) has just finished.
_SET_IF_OPEN = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, state = pcall(cjson.decode, current)
  if ok and type(state) == 'table' and state['finish'] == true then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
"""


def stream_state_set_open(stream_id: str, state: StreamState) -> bool:
    """Write a partial state unless the stream already finished; False when it had."""
    backend: Any = cache._cache  # type: ignore[attr-defined]  # Django's RedisCacheClient
    key = cache.make_and_validate_key(_key(stream_id))
    client = backend.get_client(key, write=True)
    value = backend._serializer.dumps(asdict(state))
    written = client.eval(_SET_IF_OPEN, 1, key, value, settings.WECOM_STREAM_TTL_SECONDS)
    return bool(written)


def _owner_key(stream_id: str) -> str:
    return f"stream-owner:{stream_id}"


def stream_owner_set(stream_id: str, bot_id: int) -> None:
    """Remember which bot opened the stream, so another bot's refresh cannot read it."""
    cache.set(_owner_key(stream_id), int(bot_id), timeout=settings.WECOM_STREAM_TTL_SECONDS)


def stream_owner_get(stream_id: str) -> int | None:
    owner = cache.get(_owner_key(stream_id))
    return owner if isinstance(owner, int) else None


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


class StreamFlusher:
    """Writes a generating turn's partial content to Redis and Channels from its own thread.

    The decode loop only hands over the latest text; network round trips happen here, on
    the other core, so they never slow token generation. `close` stops stream writes
    before the caller writes the final state, so a late partial can never overwrite it.
    """

    def __init__(self, *, turn_id: int, stream_id: str, deadline: float, interval: float) -> None:
        self.turn_id = turn_id
        self.stream_id = stream_id
        self.deadline = deadline
        self.interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._latest: str | None = None
        self._stream_open = True
        self._thread = threading.Thread(target=self._run, name=f"stream-{turn_id}", daemon=True)
        self._thread.start()

    def update(self, content: str) -> None:
        self._latest = content
        self._wake.set()

    def close_stream(self) -> None:
        """From now on only Channels gets updates; waits for a write in progress."""
        with self._lock:
            self._stream_open = False

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            content, self._latest = self._latest, None
            if content is not None:
                self._write(content)
            self._stop.wait(self.interval)

    def _write(self, content: str) -> None:
        from wecom.messages import MAX_CONTENT_BYTES, split_at_boundary

        try:
            with self._lock:
                if self._stream_open:
                    shown, rest = split_at_boundary(content, MAX_CONTENT_BYTES - 256)
                    if rest:
                        shown = f"{shown}\n\n…"
                    if not stream_state_set_open(
                        self.stream_id, StreamState(content=shown, deadline=self.deadline)
                    ):
                        self._stream_open = False  # finished elsewhere: stop writing it
            stream_publish(self.turn_id, content=content, finish=False, status="generating")
        except Exception:  # the next write (or the final one) supersedes a lost update
            logger.warning("stream %s: partial write failed", self.stream_id, exc_info=True)

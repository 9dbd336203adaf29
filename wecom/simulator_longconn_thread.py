"""`LongConnSimulator` on a background thread, for synchronous callers (tests, `wecom_sim`).

The simulator is asyncio; a Django test or a management command is not. This runs it on its
own event loop in a thread and offers blocking calls with the timings a caller reports.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

from wecom.longconn.frames import Frame
from wecom.simulator_longconn import LongConnSimulator, Received

T = TypeVar("T")


@dataclass
class LongConnAnswer:
    """What the simulated user saw for one question over the long connection."""

    req_id: str
    msgid: str
    finished: bool
    content: str
    frames: list[Received] = field(default_factory=list)
    feedback_id: str | None = None
    first_frame_seconds: float | None = None
    total_seconds: float = 0.0

    @property
    def finish_frames(self) -> int:
        return sum(1 for r in self.frames if r.frame.body.get("stream", {}).get("finish") is True)


class LongConnSimulatorThread:
    """Start with `with LongConnSimulatorThread(bots={...}) as sim:`; `sim.url` for the client."""

    def __init__(self, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.sim = LongConnSimulator(**kwargs)
        self.call(self.sim.start())

    def call(self, work: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, self._loop)
        return future.result(timeout)

    @property
    def url(self) -> str:
        return self.sim.url

    def wait_subscribed(self, bot_id: str, timeout: float = 30.0) -> None:
        self.call(self.sim.wait_until(lambda: self.sim.subscribed(bot_id), timeout))

    def push_text(self, bot_id: str, text: str, **kwargs: Any) -> Frame:
        return self.call(self.sim.push_text(bot_id, text, **kwargs))

    def push_media(self, bot_id: str, data: bytes, **kwargs: Any) -> Frame:
        frame, _aeskey = self.call(self.sim.push_media(bot_id, data, **kwargs))
        return frame

    def push_event(self, bot_id: str, eventtype: str, **kwargs: Any) -> Frame:
        return self.call(self.sim.push_event(bot_id, eventtype, **kwargs))

    def answer(self, frame: Frame, *, started: float, timeout: float = 120.0) -> LongConnAnswer:
        """Wait for the stream answering `frame` to finish (or the timeout) and describe it."""
        finished = True
        try:
            self.call(self.sim.wait_finished(frame.req_id, timeout))
        except TimeoutError:
            finished = False
        total = time.monotonic() - started
        frames = [r for r in self.sim.replies(frame.req_id) if r.errcode == 0]
        content = str(frames[-1].frame.body.get("stream", {}).get("content", "")) if frames else ""
        feedback = frames[0].frame.body.get("stream", {}).get("feedback") if frames else None
        return LongConnAnswer(
            req_id=frame.req_id,
            msgid=str(frame.body.get("msgid", "")),
            finished=finished,
            content=content,
            frames=frames,
            feedback_id=feedback.get("id") if isinstance(feedback, dict) else None,
            first_frame_seconds=frames[0].at - started if frames else None,
            total_seconds=total,
        )

    def ask(
        self, bot_id: str, text: str, *, timeout: float = 120.0, **kwargs: Any
    ) -> LongConnAnswer:
        """Push a text message and wait for its answer to finish."""
        started = time.monotonic()
        frame = self.push_text(bot_id, text, **kwargs)
        return self.answer(frame, started=started, timeout=timeout)

    def close(self) -> None:
        with_timeout = asyncio.run_coroutine_threadsafe(self.sim.close(), self._loop)
        try:
            with_timeout.result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

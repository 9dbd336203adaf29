"""The "you are number N in the queue" notice shown while every model slot is busy."""

from __future__ import annotations

import threading
import time

from django.utils.translation import gettext as _

from apps.bots.services.stream import reply_language
from apps.bots.streams import StreamFlusher
from apps.inference.engine import Engine, Generation


class QueueNotice:
    """Tells a waiting employee their place in line while every model slot is busy.

    Runs beside the decode loop, which blocks until the first token. The engine pushes
    each new queue position (`Generation.queue_watch`); when the expected wait (waited so
    far plus the engine's estimate) passes the bot's threshold, the stream shows "queued,
    position N". Between changes the thread sleeps, waking only when the threshold would
    pass. `stop()` on the first token joins the thread, so the notice can never overwrite
    the answer.
    """

    # Only when a slot looked free: the scheduler admits at its next step and pushes 0.
    SLOT_FREE_RECHECK_SECONDS = 2.0

    def __init__(
        self, *, generation: Generation, engine: Engine, threshold: float, flusher: StreamFlusher
    ) -> None:
        self._generation = generation
        self._engine = engine
        self._threshold = threshold
        self._flusher = flusher
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> QueueNotice:
        self._generation.queue_watch(lambda _position: self._wake.set())
        if self._generation.queue_position > 0:
            self._thread = threading.Thread(target=self._run, name="queue-notice", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._generation.queue_watch(None)
        if self._thread is not None:
            self._stopped.set()
            self._wake.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        started = time.monotonic()
        shown = 0
        while True:
            self._wake.clear()  # before the checks: a push or stop after this wakes the wait
            if self._stopped.is_set():
                return
            position = self._generation.queue_position
            if position <= 0:
                return
            timeout: float | None = None  # until the engine pushes the next position
            load = self._engine.load()
            if load.running < load.slots:
                timeout = self.SLOT_FREE_RECHECK_SECONDS
            elif position != shown:
                expected = time.monotonic() - started + load.estimated_wait_seconds
                if expected > self._threshold:
                    shown = position
                    self._show(position)
                else:
                    timeout = self._threshold - expected + 0.05
            self._wake.wait(timeout)

    def _show(self, position: int) -> None:
        with reply_language():
            self._flusher.update(
                _(
                    "All answer slots are busy: you are number %(position)s in the "
                    "queue. Your answer starts as soon as a slot frees up."
                )
                % {"position": position}
            )

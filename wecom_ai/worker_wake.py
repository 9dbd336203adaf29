"""Thread-pool workers take their next task as soon as one ends, not seconds later.

With `-P threads` a task thread acknowledges its message (`acks_late`), but the worker's
event loop only notices at its next wake-up: a network event or a timer. With the prefetch
limit reached it reads nothing, so nothing wakes it, and the next queued task waits for
the next timer, seconds away (celery/celery#6941; prefork pools wake the loop through their
result pipes). A burst larger than the worker's concurrency then trickled in by batches
every 5-10 s. A cheap repeating timer bounds that wait by its interval.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps
from celery.concurrency.thread import TaskPool as ThreadTaskPool

# How late a thread-pool worker may notice a finished task: 10 wake-ups a second.
WAKE_INTERVAL_SECONDS = 0.1


def _wake() -> None:
    """Nothing to do: the timer firing is what runs the loop (acks, the next fetch)."""


class ThreadPoolWake(bootsteps.StartStopStep):
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.timer_entry: Any = None

    def start(self, c: Any) -> None:
        if isinstance(c.pool, ThreadTaskPool):
            self.timer_entry = c.timer.call_repeatedly(WAKE_INTERVAL_SECONDS, _wake, priority=0)

    def stop(self, c: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

"""Thread-pool workers wake their event loop often, so a finished task frees its slot at once.

The effect (a burst larger than the concurrency no longer trickles in every few seconds)
is measured by `bench/doors.py`, whose default-queue worker runs on threads; here the
wiring: the step is installed on the app, arms its timer for thread pools only, and
disarms it on stop.
"""

from __future__ import annotations

from time import monotonic
from types import SimpleNamespace

from celery.concurrency.prefork import TaskPool as PreforkTaskPool
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from kombu.asynchronous.timer import Timer

from wecom_ai import worker_wake
from wecom_ai.celery import app


def _consumer(pool: object) -> SimpleNamespace:
    return SimpleNamespace(pool=pool, timer=Timer())


def test_the_wake_step_is_installed_on_every_worker_consumer():
    assert worker_wake.ThreadPoolWake in app.steps["consumer"]


def test_a_thread_pool_gets_a_repeating_wake_and_loses_it_on_stop():
    consumer = _consumer(ThreadTaskPool(limit=1))
    step = worker_wake.ThreadPoolWake(consumer)
    before = monotonic()
    step.start(consumer)
    [scheduled] = consumer.timer.queue
    # The repeating wrapper around the no-op, first due one interval from now
    assert scheduled.entry.fun.__wrapped__ is worker_wake._wake
    assert scheduled.eta - before <= worker_wake.WAKE_INTERVAL_SECONDS + 0.05
    assert step.timer_entry is not None and not step.timer_entry.canceled
    step.stop(consumer)
    assert step.timer_entry is None
    assert all(item.entry.canceled for item in consumer.timer.queue)


def test_a_prefork_pool_needs_no_wake():
    consumer = _consumer(PreforkTaskPool(limit=1))
    step = worker_wake.ThreadPoolWake(consumer)
    step.start(consumer)
    assert list(consumer.timer.queue) == []
    step.stop(consumer)

"""Live model load: how busy each inference worker's engines are, kept in Redis for the admin.

Engines live inside worker processes, where the admin cannot see them. Each worker
process publishes its engines' load once a second into one Redis hash per model profile
(one field per process); readers add up the fields that are still fresh, so a worker
that died simply drops out after a few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import redis
from django.conf import settings

from apps.inference.engine.base import Engine, EngineLoad
from apps.inference.engine.registry import get_engine

if TYPE_CHECKING:
    from apps.inference.models import ModelProfile

logger = logging.getLogger(__name__)

PUBLISH_INTERVAL_SECONDS = 1.0
# A field older than this belongs to a worker that stopped publishing: ignore it.
STALE_AFTER_SECONDS = 10.0


@dataclass(frozen=True)
class ModelLoad:
    """One model profile's load summed over the worker processes that loaded it."""

    slots: int
    running: int
    waiting: int
    estimated_wait_seconds: float  # the shortest wait any worker expects
    workers: int


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])


def _key(profile_id: int) -> str:
    return f"wecom_ai:model-load:{profile_id}"


def _worker_field() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def model_load_publish(*, profile_id: int, load: EngineLoad) -> None:
    record = {
        "slots": load.slots,
        "running": load.running,
        "waiting": load.waiting,
        "wait": load.estimated_wait_seconds,
        "at": time.time(),
    }
    key = _key(profile_id)
    pipeline = _client().pipeline()
    pipeline.hset(key, _worker_field(), json.dumps(record))
    pipeline.expire(key, int(STALE_AFTER_SECONDS * 6))
    pipeline.execute()


def model_load_get(*, profile_id: int) -> ModelLoad | None:
    """The profile's load now, or None when no live worker has it loaded."""
    try:
        raw = _client().hgetall(_key(profile_id))
    except redis.RedisError:
        logger.warning("could not read the load of model profile %s", profile_id, exc_info=True)
        return None
    fresh = []
    for value in raw.values():
        try:
            record = json.loads(value)
            if time.time() - float(record["at"]) <= STALE_AFTER_SECONDS:
                fresh.append(record)
        except (ValueError, KeyError, TypeError):
            continue
    if not fresh:
        return None
    return ModelLoad(
        slots=sum(int(record["slots"]) for record in fresh),
        running=sum(int(record["running"]) for record in fresh),
        waiting=sum(int(record["waiting"]) for record in fresh),
        estimated_wait_seconds=min(float(record["wait"]) for record in fresh),
        workers=len(fresh),
    )


class LoadPublisher:
    """Publishes the load of the engines this process uses, from one daemon thread."""

    def __init__(self, interval: float = PUBLISH_INTERVAL_SECONDS) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._engines: dict[int, Engine] = {}
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def watch(self, *, profile_id: int, engine: Engine) -> None:
        with self._lock:
            if self._pid != os.getpid():  # inherited across a fork: start over in the child
                self._engines, self._thread, self._pid = {}, None, os.getpid()
            known = self._engines.get(profile_id) is engine
            self._engines[profile_id] = engine
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="model-load-publisher", daemon=True
                )
                self._thread.start()
        if not known:
            self._publish(profile_id, engine)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                engines = list(self._engines.items())
            for profile_id, engine in engines:
                self._publish(profile_id, engine)

    def _publish(self, profile_id: int, engine: Engine) -> None:
        if engine.closed:
            return
        try:
            model_load_publish(profile_id=profile_id, load=engine.load())
        except Exception:  # the admin's view of the load must never fail an answer
            logger.warning("could not publish model profile %s load", profile_id, exc_info=True)


load_publisher = LoadPublisher()


def profile_engine(*, profile: ModelProfile) -> Engine:
    """This process's engine for `profile`, its load published so the admin sees every user."""
    engine = get_engine(profile.spec())
    load_publisher.watch(profile_id=profile.pk, engine=engine)
    return engine

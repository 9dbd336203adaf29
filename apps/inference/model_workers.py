"""Which inference workers are alive and which model profiles each serves, kept in Redis.

Answers for a profile wait in that profile's queue (`wecom_ai.queues.inference_queue`); a
worker started with `--profiles` consumes only those, a plain inference worker all of them.
Each worker rewrites its own field of one Redis hash every few seconds, so the admin and
the sweeper can tell a profile that nobody serves (its turns would wait for nothing) from
one whose worker is merely busy; a worker that died drops out once its field is stale.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import redis

from apps.inference.model_load import _client

logger = logging.getLogger(__name__)

KEY = "wecom_ai:inference-workers"
PUBLISH_INTERVAL_SECONDS = 5.0
# A field older than this belongs to a worker that stopped publishing.
STALE_AFTER_SECONDS = 20.0


@dataclass(frozen=True)
class InferenceWorker:
    name: str  # the Celery node name, e.g. inference@gpu-1
    profile_ids: frozenset[int] | None  # None: every profile (a worker without --profiles)

    def serves(self, profile_id: int) -> bool:
        return self.profile_ids is None or profile_id in self.profile_ids


def inference_worker_publish(*, name: str, profile_ids: frozenset[int] | None) -> None:
    record = {
        "profiles": None if profile_ids is None else sorted(profile_ids),
        "at": time.time(),
    }
    pipeline = _client().pipeline()
    pipeline.hset(KEY, name, json.dumps(record))
    pipeline.expire(KEY, int(STALE_AFTER_SECONDS * 6))
    pipeline.execute()


def inference_worker_leave(*, name: str) -> None:
    _client().hdel(KEY, name)


def inference_workers_live() -> list[InferenceWorker]:
    """The workers that published lately; empty when Redis cannot be read."""
    try:
        raw = _client().hgetall(KEY)
    except redis.RedisError:
        logger.warning("could not read the inference workers", exc_info=True)
        return []
    workers = []
    for name, value in raw.items():
        try:
            record = json.loads(value)
            if time.time() - float(record["at"]) > STALE_AFTER_SECONDS:
                continue
            profiles = record["profiles"]
            ids = None if profiles is None else frozenset(int(pk) for pk in profiles)
        except (ValueError, KeyError, TypeError):
            continue
        workers.append(InferenceWorker(name=_text(name), profile_ids=ids))
    return sorted(workers, key=lambda worker: worker.name)


def profile_workers(*, profile_id: int) -> list[InferenceWorker]:
    """The live workers that take this profile's answers."""
    return [worker for worker in inference_workers_live() if worker.serves(profile_id)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

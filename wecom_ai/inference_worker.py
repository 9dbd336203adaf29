"""The inference worker's side of per-profile queues: `--profiles`, and the liveness record.

`celery -A wecom_ai worker -Q inference` takes the answers of every model profile (it
consumes `inference.<id>` for each, and picks up profiles created later); adding
`--profiles 3,qwen-7b` (ids or names) limits it to those, so each host serves its own
models. Either way the worker announces what it serves (`apps.inference.model_workers`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import click
from celery import bootsteps

from wecom_ai import queues

logger = logging.getLogger(__name__)

# Read by the model warm-up in pool processes (forked after this is set) and threads.
PROFILES_ENV = "WECOM_AI_INFERENCE_PROFILES"

PROFILES_OPTION = click.Option(
    ["--profiles"],
    default=None,
    help="Inference workers: serve only these model profiles (comma-separated ids or names); "
    "default: every profile.",
)


def profiles_resolve(value: str) -> frozenset[int]:
    """Profile ids from a comma-separated list of ids or names; unknown ones fail loudly."""
    from apps.inference.models import ModelProfile

    ids: set[int] = set()
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        rows = ModelProfile.objects.filter(
            **({"pk": int(item)} if item.isdigit() else {"name": item})
        )
        pk = rows.values_list("pk", flat=True).first()
        if pk is None:
            raise click.BadParameter(f"no model profile {item!r}", param_hint="--profiles")
        ids.add(pk)
    if not ids:
        raise click.BadParameter("name at least one model profile", param_hint="--profiles")
    return frozenset(ids)


class ProfileQueues(bootsteps.StartStopStep):
    """Consumes the served profiles' queues and rewrites the liveness record every few seconds.

    Runs on the consumer's timer, in the worker's event loop: adding a queue to the task
    consumer is safe there, and a new profile's queue is picked up within one interval.
    """

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, profiles: str | None = None, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.option = profiles
        self.profile_ids: frozenset[int] | None = None
        self.active = False
        self.timer_entry: Any = None
        if profiles:
            os.environ[PROFILES_ENV] = profiles

    def start(self, c: Any) -> None:
        from django.db import connection

        selected = c.app.amqp.queues.consume_from or {}  # the -Q list
        self.active = bool(self.option) or queues.INFERENCE in selected
        if not self.active:
            return
        from apps.inference.model_workers import PUBLISH_INTERVAL_SECONDS

        try:
            if self.option:
                self.profile_ids = profiles_resolve(self.option)
        finally:
            connection.close()
        self.refresh(c)
        self.timer_entry = c.timer.call_repeatedly(
            PUBLISH_INTERVAL_SECONDS, self.refresh, (c,), priority=10
        )

    def refresh(self, c: Any) -> None:
        from django.db import connection

        from apps.inference.model_workers import inference_worker_publish
        from apps.inference.models import ModelProfile

        try:
            ids = self.profile_ids
            if ids is None:
                ids = frozenset(ModelProfile.objects.values_list("pk", flat=True))
            for profile_id in sorted(ids):
                c.add_task_queue(queues.inference_queue(profile_id))
            inference_worker_publish(name=c.hostname, profile_ids=self.profile_ids)
        except Exception:  # a database or Redis blip: the next round tries again
            logger.warning("could not refresh the inference queues", exc_info=True)
        finally:
            connection.close()

    def stop(self, c: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None
        if not self.active:
            return
        from apps.inference.model_workers import inference_worker_leave

        try:
            inference_worker_leave(name=c.hostname)
        except Exception:
            logger.warning("could not withdraw the inference worker record", exc_info=True)

    shutdown = stop

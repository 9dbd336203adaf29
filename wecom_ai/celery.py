"""The Celery application: Redis broker and result backend, queues from `wecom_ai.queues`."""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from wecom_ai import inference_worker, queues, worker_wake

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wecom_ai.settings")

app = Celery("wecom_ai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_routes = {
    "apps.bots.tasks.turn_generate": {"queue": queues.INFERENCE},
}
app.autodiscover_tasks()
# Answers go to their profile's queue (`services.receive.turn_enqueue`); `--profiles` limits
# an inference worker to some profiles.
app.user_options["worker"].add(inference_worker.PROFILES_OPTION)
app.steps["consumer"].add(inference_worker.ProfileQueues)
app.steps["consumer"].add(worker_wake.ThreadPoolWake)


@worker_process_init.connect
def _warm_models_in_pool_process(**_kwargs: Any) -> None:
    """Load models in each prefork pool process after fork, in the background.

    Never in the parent (CUDA state does not survive fork), and never inside this signal
    (Celery kills a process whose init takes over 4 seconds); a task that arrives while
    the model loads waits for it on the registry's per-model lock.
    """
    if os.environ.get("WECOM_AI_WARM_MODELS") == "1":
        _warm_in_background()


@worker_ready.connect
def _warm_models_in_worker(sender: Any = None, **_kwargs: Any) -> None:
    """Thread and solo pools run tasks in the worker process itself: load models there.

    On `worker_ready`, not `worker_init`: a loader thread started while the worker still
    imports its task modules can deadlock with it on the import lock.
    """
    pool = type(getattr(sender, "pool", None)).__module__
    if os.environ.get("WECOM_AI_WARM_MODELS") == "1" and pool.endswith((".thread", ".solo")):
        _warm_in_background()


def _warm_in_background() -> None:
    def warm() -> None:
        from django.db import connection

        from apps.bots.services.generate import engines_warm

        try:
            selected = os.environ.get(inference_worker.PROFILES_ENV)
            engines_warm(
                profile_ids=inference_worker.profiles_resolve(selected) if selected else None
            )
        finally:
            connection.close()

    threading.Thread(target=warm, name="model-warmup", daemon=True).start()

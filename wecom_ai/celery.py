"""The Celery application: Redis broker and result backend, queues from `wecom_ai.queues`."""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from wecom_ai import queues

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wecom_ai.settings")

app = Celery("wecom_ai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_routes = {
    "apps.bots.tasks.turn_generate": {"queue": queues.INFERENCE},
}
app.autodiscover_tasks()


@worker_process_init.connect
def _warm_models(**_kwargs: Any) -> None:
    """Load models in each pool process after fork, in the background.

    Never in the parent (CUDA state does not survive fork), and never inside this signal
    (Celery kills a process whose init takes over 4 seconds); a task that arrives while
    the model loads waits for it on the registry's per-model lock.
    """
    if os.environ.get("WECOM_AI_WARM_MODELS") != "1":
        return

    def warm() -> None:
        from django.db import connection

        from apps.bots.services import engines_warm

        try:
            engines_warm()
        finally:
            connection.close()

    threading.Thread(target=warm, name="model-warmup", daemon=True).start()

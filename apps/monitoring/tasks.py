"""Thin Celery tasks: beat runs the alert evaluation every minute on the default queue."""

from __future__ import annotations

from celery import shared_task

from apps.monitoring.services.alerts import alerts_run
from apps.monitoring.services.rollup import rollup_recent
from wecom_ai import queues


@shared_task(queue=queues.DEFAULT, ignore_result=True)
def alerts_evaluate() -> int:
    run = alerts_run()
    return 0 if run is None else run.sent


@shared_task(queue=queues.DEFAULT, ignore_result=True)
def dashboard_rollup() -> int:
    return rollup_recent()

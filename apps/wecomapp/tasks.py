"""Celery tasks of the app door: pulling 微信客服's messages after its callback event."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from apps.wecomapp.models import WeComApp
from wecom.app import AppApiError

logger = logging.getLogger(__name__)

KF_SYNC_MAX_RETRIES = 8


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def kf_sync(self: Any, app_id: int, open_kfid: str, token: str) -> None:
    # The cursor is durable, so a retry (or the next event) pulls whatever this one did not.
    from apps.wecomapp.kf import kf_messages_sync

    app = WeComApp.objects.select_related("bot").filter(pk=app_id, enabled=True).first()
    if app is None:
        return
    try:
        kf_messages_sync(app=app, open_kfid=open_kfid, token=token)
    except AppApiError as exc:
        if not exc.retryable:
            logger.warning("app %s: 微信客服 sync for %s refused: %s", app.slug, open_kfid, exc)
            return
        countdown = float(min(2**self.request.retries, 30))
        raise self.retry(exc=exc, countdown=countdown, max_retries=KF_SYNC_MAX_RETRIES) from exc


@shared_task(ignore_result=True)
def app_thinking_notice(turn_id: int) -> None:
    from apps.wecomapp.services import app_thinking_notice as notice_send

    notice_send(turn_id=turn_id)

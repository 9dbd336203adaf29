"""Thin Celery tasks: take ids, call a service, own the retry policy only."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from apps.bots.services import deliver, generate, push
from wecom_ai import queues

logger = logging.getLogger(__name__)

# A database, broker or Redis outage: worth a retry, unlike a bug or a refused answer.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    KombuOperationalError,
    RedisError,
    ConnectionError,
)


def retry_countdown(*, retries: int, give_up_at: float, now: float) -> float | None:
    """Exponential backoff (1, 2, 4, 8, 10, 10 … s); None once the next try would miss."""
    countdown = float(min(2**retries, 10))
    return countdown if now + countdown < give_up_at else None


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def turn_generate(self: Any, turn_id: int, give_up_at: float | None = None) -> None:
    # A worker process that dies mid-answer gets the message requeued (reject_on_worker_lost);
    # the service's heartbeat lease makes the retry take over instead of answering twice.
    # A transient outage is retried until the stream window closes; past it the sweeper
    # gives the turn its apology, so an error never acknowledges a turn away unanswered.
    if give_up_at is None:
        give_up_at = time.time() + settings.WECOM_STREAM_DEADLINE_SECONDS
    try:
        generate.turn_generate(turn_id=turn_id)
    except TRANSIENT_ERRORS as exc:
        countdown = retry_countdown(
            retries=self.request.retries, give_up_at=give_up_at, now=time.time()
        )
        if countdown is None:
            raise
        logger.warning("turn %s: %s; retrying in %.0f s", turn_id, exc, countdown)
        raise self.retry(
            exc=exc,
            countdown=countdown,
            max_retries=None,
            args=(turn_id,),
            kwargs={"give_up_at": give_up_at},
            priority=queues.PRIORITY_RESUMED,
        ) from exc


@shared_task(ignore_result=True)
def turns_sweep() -> int:
    return deliver.turns_sweep() + push.pushes_sweep()


# A send API answering "rate limited" or timing out: 1, 2, 4 … 30 s apart, about 4 minutes.
PUSH_MAX_RETRIES = 10


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def turn_push(self: Any, turn_id: int) -> None:
    # The push service records success or a final refusal on the turn; a retryable refusal
    # or an outage of our own stores comes back here for another try.
    final_try = self.request.retries >= PUSH_MAX_RETRIES
    try:
        push.turn_push(turn_id=turn_id, final_try=final_try)
    except (push.PushError, *TRANSIENT_ERRORS) as exc:
        countdown = float(min(2**self.request.retries, 30))
        logger.warning("turn %s: push failed (%s); retrying in %.0f s", turn_id, exc, countdown)
        raise self.retry(exc=exc, countdown=countdown, max_retries=PUSH_MAX_RETRIES) from exc

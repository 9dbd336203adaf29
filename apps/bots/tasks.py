"""Thin Celery tasks: take ids, call a service, own the retry policy only."""

from __future__ import annotations

from celery import shared_task

from apps.bots.services import deliver, generate


@shared_task(acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def turn_generate(turn_id: int) -> None:
    # A worker process that dies mid-answer gets the message requeued (reject_on_worker_lost);
    # the service's heartbeat lease makes the retry take over instead of answering twice.
    generate.turn_generate(turn_id=turn_id)


@shared_task(ignore_result=True)
def turns_sweep() -> int:
    return deliver.turns_sweep()

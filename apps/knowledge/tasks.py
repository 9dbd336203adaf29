"""Thin Celery tasks: take ids, call a service, own the retry policy only."""

from __future__ import annotations

from celery import shared_task

from apps.knowledge.services import ingest
from wecom_ai import queues


@shared_task(queue=queues.INGEST, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def document_ingest(document_id: int) -> None:
    # No retries: every failure ends as a failed document an admin can read and re-index.
    # A worker that dies mid-run gets the message redelivered; the new run supersedes it.
    ingest.document_ingest(document_id=document_id)

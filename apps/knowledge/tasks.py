"""Thin Celery tasks: take ids, call a service, own the retry policy only."""

from __future__ import annotations

import logging
import resource

from celery import shared_task
from django.conf import settings

from apps.knowledge.services import ingest, maintenance, reembed
from wecom_ai import queues

logger = logging.getLogger(__name__)

# What the hard limit adds to the soft one: time for the run to record its failure.
_HARD_LIMIT_GRACE_SECONDS = 60


def ingest_memory_limit_apply(*, megabytes: int) -> bool:
    """Cap this process's private writable memory (RLIMIT_DATA); True if a cap is set.

    RLIMIT_DATA, not RLIMIT_AS: the embedding model is a read-only file mapping and thread
    stacks and allocator arenas reserve address space they never use, so an address-space
    cap would fail healthy runs; a parser inflating a document is caught by this one, as
    a MemoryError. Never raises the cap above one already set.
    """
    if megabytes <= 0:
        return False
    limit = megabytes * 1024 * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        return True
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return True


@shared_task(
    queue=queues.INGEST,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=settings.KNOWLEDGE_INGEST_TIME_LIMIT_SECONDS,
    time_limit=settings.KNOWLEDGE_INGEST_TIME_LIMIT_SECONDS + _HARD_LIMIT_GRACE_SECONDS,
)
def document_ingest(document_id: int) -> None:
    # No retries: every failure ends as a failed document an admin can read and re-index.
    # A worker that dies mid-run gets the message redelivered; the new run supersedes it.
    # The memory cap applies to the process running this task: ingest has its own worker
    # (see wecom_ai/runner.py and docker-compose.yml), so no other work shares the cap.
    try:
        ingest_memory_limit_apply(megabytes=settings.KNOWLEDGE_INGEST_MEMORY_LIMIT_MB)
    except (ValueError, OSError):
        logger.warning("could not set the ingest memory limit", exc_info=True)
    ingest.document_ingest(document_id=document_id)


@shared_task(
    queue=queues.INGEST,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=settings.KNOWLEDGE_INGEST_TIME_LIMIT_SECONDS,
    time_limit=settings.KNOWLEDGE_INGEST_TIME_LIMIT_SECONDS + _HARD_LIMIT_GRACE_SECONDS,
)
def knowledge_base_reembed(kb_id: int) -> None:
    # A run that dies leaves the old vectors serving and its copies unswapped; the next
    # change (or a redelivery) starts over from the pinned model.
    reembed.knowledge_base_reembed(kb_id=kb_id)


@shared_task(queue=queues.INGEST, ignore_result=True, soft_time_limit=1800, time_limit=1860)
def chunks_vacuum() -> None:
    # On the ingest worker: deletions come from its runs, and one vacuum at a time is enough.
    maintenance.chunks_vacuum()

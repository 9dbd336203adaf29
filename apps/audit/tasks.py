"""Thin Celery tasks: take ids, call a service, own the retry policy only.

Archive pulls run on the `archive` queue (the vendor SDK is loaded only by those workers);
the rest run on `default`. Beat runs `archive_pull_due` every minute, `ledger_checkpoint`
once a day just after midnight and `retention_purge` once a night.
"""

from __future__ import annotations

from celery import shared_task
from django.db import transaction

from apps.audit.services import archive, ledger, retention
from wecom_ai import queues


@shared_task(bind=True, queue=queues.ARCHIVE, ignore_result=True, max_retries=3)
def archive_pull(self, source_id: int) -> None:
    result = archive.archive_pull(source_id=source_id)
    if result.error and result.retryable:
        # Transient (network, SDK system error): try again soon, well within the 5-day window.
        raise self.retry(countdown=60 * (2**self.request.retries))


@shared_task(queue=queues.DEFAULT, ignore_result=True)
def archive_pull_due() -> int:
    """Every minute from beat: enqueue sources whose interval passed, alert on gaps."""
    archive.archive_gap_check()
    due = archive.archive_sources_due()
    for source_id in due:
        transaction.on_commit(lambda source_id=source_id: archive_pull.delay(source_id))
    return len(due)


@shared_task(queue=queues.DEFAULT, ignore_result=True)
def ledger_checkpoint() -> str:
    return ledger.ledger_checkpoint_write().head_hash


@shared_task(queue=queues.DEFAULT, ignore_result=True)
def retention_purge() -> int:
    result = retention.retention_purge()
    return result.turns + result.messages

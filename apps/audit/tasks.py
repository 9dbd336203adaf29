"""Thin Celery tasks: take ids, call a service, own the retry policy only.

Archive pulls and quarantine retries run on the `archive` queue (the vendor SDK is loaded
only by those workers, never in a web request);
LLM review runs on `inference`, next to the loaded model; the rest run on `default`. Beat runs
`archive_pull_due` every minute, `ledger_checkpoint` once a day just after midnight and
`retention_purge` once a night.
"""

from __future__ import annotations

from celery import shared_task
from django.db import transaction

from apps.audit.models import ArchivedMessage
from apps.audit.services import archive, ledger, llm_review, retention
from wecom_ai import queues


@shared_task(bind=True, queue=queues.ARCHIVE, ignore_result=True, max_retries=3)
def archive_pull(self, source_id: int) -> None:
    result = archive.archive_pull(source_id=source_id)
    if result.error and result.retryable:
        # Transient (network, SDK system error): try again soon, well within the 5-day window.
        raise self.retry(countdown=60 * (2**self.request.retries))


@shared_task(bind=True, queue=queues.ARCHIVE, ignore_result=True, max_retries=10)
def archive_quarantine_retry(self, source_id: int, quarantine_ids: list[int]) -> int:
    """Open quarantined records again; waits for a running pull of the source to end."""
    result = archive.archive_quarantine_retry(source_id=source_id, quarantine_ids=quarantine_ids)
    if result.skipped or (result.error and result.retryable):
        raise self.retry(countdown=30)
    return result.stored


@shared_task(queue=queues.INFERENCE, ignore_result=True)
def archive_llm_review(message_ids: list[int]) -> int:
    """Review the conversations of freshly stored messages with the local model."""
    by_source: dict[int, list[int]] = {}
    for pk, source_id in ArchivedMessage.objects.filter(pk__in=message_ids).values_list(
        "pk", "source_id"
    ):
        by_source.setdefault(source_id, []).append(pk)
    cases = 0
    for source_id, ids in by_source.items():
        cases += llm_review.archive_messages_llm_review(source_id=source_id, message_ids=ids).cases
    return cases


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

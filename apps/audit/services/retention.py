"""Retention: purge question/answer and archived message text once policies allow it.

A bot's (or archive source's) retention is the longest `retention_days` of its enabled
policies; a legal hold on any of its policies, enabled or not, keeps everything. Records
under an open review case are kept until the case is decided. Rows stay (ids, times,
senders); their text, raw record and media go, and each batch appends a `purge` entry to
the ledger. Ledger payloads hold fingerprints, not text, so the chain still verifies.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.audit.models import (
    ArchivedMessage,
    ArchiveSource,
    AuditPolicy,
    LedgerEntry,
    ReviewCase,
)
from apps.audit.services.ledger import ledger_append, object_ref
from apps.bots.models import Bot, Turn

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
# Every field that can hold what an employee or the model wrote (feedback may carry a
# comment), with its purged value.
_TURN_PURGED = {
    "question": "",
    "question_masked": "",
    "answer": "",
    "reasoning": "",
    "withheld_answer": "",
    "feedback_detail": {},
    # Not content, but a bearer capability into the chat; normally cleared once used.
    "response_url": "",
}
TURN_FIELDS = tuple(_TURN_PURGED)
MESSAGE_FIELDS = ("text", "raw", "sdkfileid", "media")


@dataclass(slots=True)
class PurgeResult:
    turns: int = 0
    messages: int = 0
    media_files: int = 0
    ledger_entries: int = 0


def retention_days_effective(policies: Iterable[AuditPolicy]) -> int | None:
    """Days to keep content under these policies; None = keep (no limit or a legal hold)."""
    policies = list(policies)
    if any(policy.legal_hold for policy in policies):
        return None
    days = [p.retention_days for p in policies if p.enabled and p.retention_days]
    return max(days) if days else None


def _open_review() -> Q:
    return Q(review_cases__status=ReviewCase.Status.OPEN)


def _expired_turns(bot: Bot, cutoff: dt.datetime) -> QuerySet[Turn]:
    has_text = ~Q(**_TURN_PURGED)  # any of them not yet empty
    return (
        Turn.objects.filter(bot=bot, received_at__lt=cutoff, status__in=Turn.TERMINAL)
        .filter(has_text)
        .exclude(_open_review())
    )


def _expired_messages(source: ArchiveSource, cutoff: dt.datetime) -> QuerySet[ArchivedMessage]:
    return ArchivedMessage.objects.filter(
        source=source, msgtime__lt=cutoff, purged_at__isnull=True
    ).exclude(_open_review())


def _purge_entry(
    *,
    scope: Bot | ArchiveSource,
    model: str,
    ids: list[int],
    days: int,
    cutoff: dt.datetime,
    fields: tuple[str, ...],
) -> None:
    ledger_append(
        kind=LedgerEntry.Kind.PURGE,
        ref=object_ref(scope),
        payload={
            "model": model,
            "ids": ids,
            "fields": list(fields),
            "retention_days": days,
            "cutoff": cutoff.astimezone(dt.UTC).isoformat(),
        },
    )


def _turns_purge(bot: Bot, days: int, now: dt.datetime, result: PurgeResult) -> None:
    cutoff = now - dt.timedelta(days=days)
    while True:
        with transaction.atomic():
            ids = list(
                _expired_turns(bot, cutoff).order_by("pk").values_list("pk", flat=True)[:BATCH_SIZE]
            )
            if not ids:
                return
            Turn.objects.filter(pk__in=ids).update(**_TURN_PURGED)
            _purge_entry(
                scope=bot, model="bots.turn", ids=ids, days=days, cutoff=cutoff, fields=TURN_FIELDS
            )
        result.turns += len(ids)
        result.ledger_entries += 1


def _media_delete(paths: list[str]) -> None:
    root = Path(settings.MEDIA_ROOT)
    for relative in paths:
        try:
            (root / relative).unlink(missing_ok=True)
        except OSError:
            logger.exception("retention: cannot delete media file %s", relative)


def _messages_purge(
    source: ArchiveSource, days: int, now: dt.datetime, result: PurgeResult
) -> None:
    cutoff = now - dt.timedelta(days=days)
    while True:
        with transaction.atomic():
            batch = list(
                _expired_messages(source, cutoff)
                .order_by("pk")
                .values_list("pk", "media_path")[:BATCH_SIZE]
            )
            if not batch:
                return
            ids = [pk for pk, _path in batch]
            paths = [path for _pk, path in batch if path]
            ArchivedMessage.objects.filter(pk__in=ids).update(
                text="", raw={}, sdkfileid="", media_path="", purged_at=now
            )
            _purge_entry(
                scope=source,
                model="audit.archivedmessage",
                ids=ids,
                days=days,
                cutoff=cutoff,
                fields=MESSAGE_FIELDS,
            )
            transaction.on_commit(lambda paths=paths: _media_delete(paths))
        result.messages += len(ids)
        result.media_files += len(paths)
        result.ledger_entries += 1


def retention_purge(*, now: dt.datetime | None = None) -> PurgeResult:
    """Purge expired content of every bot and archive source (batched, restartable)."""
    now = now or timezone.now()
    result = PurgeResult()
    for bot in Bot.objects.prefetch_related("audit_policies"):
        days = retention_days_effective(bot.audit_policies.all())
        if days is not None:
            _turns_purge(bot, days, now, result)
    for source in ArchiveSource.objects.prefetch_related("policies"):
        days = retention_days_effective(source.policies.all())
        if days is not None:
            _messages_purge(source, days, now, result)
    if result.ledger_entries:
        logger.info(
            "retention purge: %s turns, %s archived messages, %s media files",
            result.turns,
            result.messages,
            result.media_files,
        )
    return result

"""One page of pulled records: decrypt, then store messages, quarantine, review cases,
ledger entries and the cursor in one transaction."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, transaction

from apps.audit.models import (
    ArchivedMessage,
    ArchiveQuarantine,
    ArchiveSource,
    AuditPolicy,
    LedgerEntry,
)
from apps.audit.services.archive.sdk import ArchivePullResult
from apps.audit.services.ledger import (
    LedgerRecord,
    content_fingerprint,
    ledger_append_many,
    object_ref,
)
from apps.audit.services.policy import PolicyDecision, policy_evaluate
from apps.audit.services.review import review_cases_open_for_message
from wecom.archive.decrypt import ArchivedMessage as DecryptedMessage
from wecom.archive.decrypt import ArchiveRecordError, open_record
from wecom.archive.sdk import ArchiveSdkError, FinanceSdk

# One logger for the whole package, as when it was one module.
logger = logging.getLogger(__package__)


@dataclass(slots=True)
class Prepared:
    """One pulled record after decryption (message) or failure (quarantine)."""

    seq: int | None
    item: Any
    message: DecryptedMessage | None = None
    error: str = ""
    error_code: int | None = None
    media: dict[str, Any] = field(default_factory=dict)


def records_prepare(
    sdk: FinanceSdk, items: list[Any], keys: Mapping[int, str]
) -> tuple[list[Prepared], ArchiveSdkError | None]:
    """Decrypt a page; stop (returning the error) at the first transient SDK error."""
    prepared = []
    for item in items:
        seq = item.get("seq") if isinstance(item, Mapping) else None
        seq = seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None
        try:
            message = open_record(sdk, item, keys)
        except ArchiveSdkError as exc:
            if exc.retryable:
                return prepared, exc
            prepared.append(Prepared(seq=seq, item=item, error=str(exc), error_code=exc.code))
            continue
        except ArchiveRecordError as exc:
            prepared.append(Prepared(seq=seq, item=item, error=str(exc)))
            continue
        prepared.append(Prepared(seq=seq, item=item, message=message))
    return prepared, None


def _message_row(
    source: ArchiveSource, record: Prepared, decision: PolicyDecision | None
) -> ArchivedMessage:
    message = record.message
    assert message is not None and record.seq is not None
    return ArchivedMessage(
        source=source,
        msgid=message.msgid,
        seq=record.seq,
        publickey_ver=record.item["publickey_ver"],
        action=message.action,
        sender=message.sender,
        tolist=list(message.tolist),
        roomid=message.roomid,
        msgtime=message.msgtime,
        msgtype=message.msgtype,
        text=message.text or "",
        external=message.external,
        revoked_msgid=message.revoked_msgid or "",
        sdkfileid=message.sdkfileid or "",
        policy_action=decision.action if decision and decision.matches else "",
        raw=dict(message.raw),
        **record.media,
    )


def _ledger_payload(row: ArchivedMessage, decision: PolicyDecision | None) -> dict[str, Any]:
    return {
        "source": row.source_id,
        "msgid": row.msgid,
        "seq": row.seq,
        "publickey_ver": row.publickey_ver,
        "action": row.action,
        "from": row.sender,
        "tolist": list(row.tolist),
        "roomid": row.roomid,
        "msgtime": row.msgtime.astimezone(dt.UTC).isoformat(),
        "msgtype": row.msgtype,
        "external": row.external,
        "revoked_msgid": row.revoked_msgid,
        "text_hmac": content_fingerprint(row.text) if row.text else None,
        "media_sha256": row.media_sha256 or None,
        "policy": decision.as_record() if decision and decision.matches else None,
    }


def page_store(
    *,
    source: ArchiveSource,
    cursor: int,
    prepared: list[Prepared],
    policies: list[AuditPolicy],
    result: ArchivePullResult,
    advance_cursor: bool = True,
) -> int:
    """Store messages, quarantine, cases, ledger entries and the new cursor, atomically."""
    new_cursor = max([cursor, *(p.seq for p in prepared if p.seq is not None)])
    with transaction.atomic():
        locked = ArchiveSource.objects.select_for_update().get(pk=source.pk)
        if advance_cursor and locked.cursor != cursor:
            raise DatabaseError(
                f"archive source {source.pk}: cursor moved from {cursor} to {locked.cursor} "
                "during the pull"
            )
        messages = [p for p in prepared if p.message is not None and p.seq is not None]
        seen = set(
            ArchivedMessage.objects.filter(
                msgid__in=[p.message.msgid for p in messages]  # type: ignore[union-attr]
            ).values_list("msgid", flat=True)
        )
        rows, decisions = [], []
        for record in messages:
            assert record.message is not None
            if record.message.msgid in seen:
                result.duplicates += 1
                continue
            seen.add(record.message.msgid)
            decision = (
                policy_evaluate(policies=policies, text=record.message.text)
                if policies and record.message.text
                else None
            )
            rows.append(_message_row(source, record, decision))
            decisions.append(decision)
        rows = ArchivedMessage.objects.bulk_create(rows)
        _recalls_link(source, rows)
        _llm_review_enqueue(rows, policies)
        for row, decision in zip(rows, decisions, strict=True):
            if decision is not None and decision.needs_review:
                result.cases += len(
                    review_cases_open_for_message(message=row, decision=decision, policies=policies)
                )
        ledger_append_many(
            records=[
                LedgerRecord(
                    kind=LedgerEntry.Kind.ARCHIVE_MESSAGE,
                    ref=object_ref(row),
                    payload=_ledger_payload(row, decision),
                )
                for row, decision in zip(rows, decisions, strict=True)
            ]
        )
        failures = [p for p in prepared if p.message is None or p.seq is None]
        ArchiveQuarantine.objects.bulk_create(
            [
                ArchiveQuarantine(
                    source=source,
                    seq=p.seq,
                    msgid=(p.item.get("msgid") if isinstance(p.item, Mapping) else "") or "",
                    error=p.error or "record has no valid seq",
                    error_code=p.error_code,
                    record=p.item if isinstance(p.item, Mapping) else {"item": p.item},
                )
                for p in failures
            ],
            ignore_conflicts=True,
        )
        if advance_cursor:
            ArchiveSource.objects.filter(pk=source.pk).update(cursor=new_cursor)
    result.stored += len(rows)
    result.quarantined += len(failures)
    result.media_stored += sum(
        1 for r in rows if r.media_status == ArchivedMessage.MediaStatus.STORED
    )
    result.media_pending += sum(
        1 for r in rows if r.media_status == ArchivedMessage.MediaStatus.PENDING
    )
    for failure in failures:
        logger.warning(
            "archive source %s: quarantined seq %s: %s", source.pk, failure.seq, failure.error
        )
    return new_cursor


def _llm_review_enqueue(rows: list[ArchivedMessage], policies: list[AuditPolicy]) -> None:
    """Queue stored texts for LLM review once the page commits (inference queue)."""
    if not any(policy.llm_review_enabled for policy in policies):
        return
    message_ids = [row.pk for row in rows if row.text]
    if message_ids:
        from apps.audit.tasks import archive_llm_review

        transaction.on_commit(lambda: archive_llm_review.delay(message_ids))


def _recalls_link(source: ArchiveSource, rows: list[ArchivedMessage]) -> None:
    """Mark recalled originals, whichever of the pair arrived first."""
    recalls = {r.revoked_msgid: r.msgtime for r in rows if r.revoked_msgid}
    for msgid, when in recalls.items():
        ArchivedMessage.objects.filter(msgid=msgid, recalled_at__isnull=True).update(
            recalled_at=when
        )
    originals = [r.msgid for r in rows if not r.revoked_msgid]
    if originals:
        for recall in ArchivedMessage.objects.filter(revoked_msgid__in=originals):
            ArchivedMessage.objects.filter(
                msgid=recall.revoked_msgid, recalled_at__isnull=True
            ).update(recalled_at=recall.msgtime)

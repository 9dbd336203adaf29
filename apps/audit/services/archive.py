"""Session archive pulls: fetch, decrypt, store once, check, and move the cursor safely.

`archive_pull` pages through `GetChatData` from the durable cursor. Each page is stored in
one transaction together with the cursor, so the cursor never passes a record that is not
stored (or quarantined with its error). A network error stops the pull where it is; the
next pull resumes after the last stored seq, and the unique msgid keeps a replayed page from
storing anything twice. WeCom deletes records after 5 days, so errors and lag are alerted
(log at ERROR/WARNING and the source's `health`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.audit import selectors
from apps.audit.models import (
    ArchivedMessage,
    ArchiveQuarantine,
    ArchiveSource,
    AuditPolicy,
    LedgerEntry,
)
from apps.audit.services.ledger import (
    LedgerRecord,
    content_fingerprint,
    ledger_append_many,
    object_ref,
)
from apps.audit.services.policy import PolicyDecision, policy_evaluate
from apps.audit.services.review import review_cases_open_for_message
from apps.core.fields import is_undecryptable
from apps.core.language import deployment_language
from wecom.archive.decrypt import ArchivedMessage as DecryptedMessage
from wecom.archive.decrypt import ArchiveRecordError, open_record
from wecom.archive.sdk import (
    BINDING_ERROR,
    ArchiveSdkError,
    FinanceSdk,
    SdkLibraryConfig,
    sdk_library_load,
)

logger = logging.getLogger(__name__)

ARCHIVE_WINDOW = dt.timedelta(days=5)
# Session-level advisory lock namespace (two-int form: this, source id): one puller per source.
_PULL_LOCK_NAMESPACE = 0x0A7C_1E00
_MEDIA_RETRY_LIMIT = 100
_MEDIA_EXTENSIONS = {"image": ".jpg", "voice": ".amr", "video": ".mp4"}
_SAFE_EXT = re.compile(r"^[A-Za-z0-9]{1,10}$")


def gap_warning_after() -> dt.timedelta:
    """How old the newest pulled data may get before the source warns (default 4 days)."""
    hours = getattr(settings, "AUDIT_ARCHIVE_GAP_WARNING_HOURS", 96)
    return dt.timedelta(hours=float(hours))


@dataclass(slots=True)
class ArchivePullResult:
    source_id: int
    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    media_stored: int = 0
    media_pending: int = 0
    cases: int = 0
    cursor: int = 0
    error: str = ""
    error_code: int | None = None
    retryable: bool = False
    skipped: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(slots=True)
class _Prepared:
    """One pulled record after decryption (message) or failure (quarantine)."""

    seq: int | None
    item: Any
    message: DecryptedMessage | None = None
    error: str = ""
    error_code: int | None = None
    media: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _pull_lock(source_id: int) -> Iterator[bool]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_PULL_LOCK_NAMESPACE, source_id])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_unlock(%s, %s)", [_PULL_LOCK_NAMESPACE, source_id]
                )


def _private_keys(source: ArchiveSource, result: ArchivePullResult) -> dict[int, str]:
    keys = {}
    for key in source.keys.all():
        if is_undecryptable(key.private_key):
            with deployment_language():
                warning = _(
                    "the private key of publickey_ver=%(version)s cannot be decrypted "
                    "with FIELD_ENCRYPTION_KEYS"
                ) % {"version": key.publickey_ver}
            result.warnings.append(warning)
            continue
        keys[key.publickey_ver] = key.private_key
    return keys


def sdk_library_config() -> SdkLibraryConfig:
    """The vendor library is deployment configuration: a form must never choose what the
    workers load (its constructors run as the worker, before any check)."""
    return SdkLibraryConfig(
        path=settings.ARCHIVE_SDK_LIBRARY,
        allowed_dirs=tuple(settings.ARCHIVE_SDK_ALLOWED_DIRS),
        sha256=settings.ARCHIVE_SDK_SHA256,
        trusted_uids=frozenset(settings.ARCHIVE_SDK_TRUSTED_UIDS),
    )


def _sdk_open(source: ArchiveSource) -> FinanceSdk:
    if is_undecryptable(source.secret):
        raise ArchiveSdkError(
            BINDING_ERROR, "the archive secret cannot be decrypted with FIELD_ENCRYPTION_KEYS"
        )
    library = sdk_library_load(sdk_library_config())
    return FinanceSdk(library, corp_id=source.corp_id, secret=source.secret)


def _sdk_options(source: ArchiveSource) -> dict[str, Any]:
    return {
        "proxy": source.proxy,
        "passwd": source.proxy_password or "",
        "timeout": source.timeout_seconds,
    }


# --- media ------------------------------------------------------------------------------------


def _media_relative_path(
    *, source_id: int, msgid: str, msgtype: str, msgtime: dt.datetime, raw: Mapping[str, Any]
) -> str:
    """MEDIA_ROOT-relative path: per source and month, named by a hash of the msgid."""
    digest = hashlib.sha256(msgid.encode()).hexdigest()[:32]
    body = raw.get(msgtype)
    ext = _MEDIA_EXTENSIONS.get(msgtype, ".bin")
    fileext = body.get("fileext") if isinstance(body, Mapping) else None
    if isinstance(fileext, str) and _SAFE_EXT.match(fileext):
        ext = "." + fileext.lower()
    return f"archive/{source_id}/{msgtime:%Y/%m}/{digest}{ext}"


def _media_download(
    sdk: FinanceSdk, source: ArchiveSource, *, sdkfileid: str, relative: str
) -> dict[str, Any]:
    """Stream a media file to MEDIA_ROOT (atomically) and return its media fields."""
    target = Path(settings.MEDIA_ROOT) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in sdk.iter_media(sdkfileid=sdkfileid, **_sdk_options(source)):
                handle.write(piece)
                digest.update(piece)
                size += len(piece)
        os.replace(partial, target)
    except ArchiveSdkError as exc:
        statuses = ArchivedMessage.MediaStatus
        status = statuses.PENDING if exc.retryable else statuses.FAILED
        return {"media_status": status, "media_error": str(exc), "media_path": ""}
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return {
        "media_status": ArchivedMessage.MediaStatus.STORED,
        "media_path": relative,
        "media_sha256": digest.hexdigest(),
        "media_size": size,
        "media_error": "",
    }


def _media_retry(sdk: FinanceSdk, source: ArchiveSource, result: ArchivePullResult) -> None:
    """Download media that failed with a transient error on an earlier pull."""
    pending = ArchivedMessage.objects.filter(
        source=source, media_status=ArchivedMessage.MediaStatus.PENDING, purged_at__isnull=True
    ).order_by("seq")[:_MEDIA_RETRY_LIMIT]
    for message in pending:
        relative = _media_relative_path(
            source_id=source.pk,
            msgid=message.msgid,
            msgtype=message.msgtype,
            msgtime=message.msgtime,
            raw=message.raw,
        )
        fields = _media_download(sdk, source, sdkfileid=message.sdkfileid, relative=relative)
        with transaction.atomic():
            ArchivedMessage.objects.filter(pk=message.pk).update(**fields)
            if fields["media_status"] == ArchivedMessage.MediaStatus.STORED:
                result.media_stored += 1
                ledger_append_many(
                    records=[
                        LedgerRecord(
                            kind=LedgerEntry.Kind.ARCHIVE_MESSAGE,
                            ref=object_ref(message),
                            payload={
                                "event": "media_stored",
                                "msgid": message.msgid,
                                "media_sha256": fields["media_sha256"],
                                "media_size": fields["media_size"],
                            },
                        )
                    ]
                )
            else:
                result.media_pending += 1


# --- one page -------------------------------------------------------------------------------


def _prepare(
    sdk: FinanceSdk, items: list[Any], keys: Mapping[int, str]
) -> tuple[list[_Prepared], ArchiveSdkError | None]:
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
            prepared.append(_Prepared(seq=seq, item=item, error=str(exc), error_code=exc.code))
            continue
        except ArchiveRecordError as exc:
            prepared.append(_Prepared(seq=seq, item=item, error=str(exc)))
            continue
        prepared.append(_Prepared(seq=seq, item=item, message=message))
    return prepared, None


def _message_row(
    source: ArchiveSource, record: _Prepared, decision: PolicyDecision | None
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


def _store_page(
    *,
    source: ArchiveSource,
    cursor: int,
    prepared: list[_Prepared],
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


def _media_for_page(sdk: FinanceSdk, source: ArchiveSource, prepared: list[_Prepared]) -> None:
    """Download media of new messages before their page is stored."""
    candidates = [p for p in prepared if p.message is not None and p.message.sdkfileid]
    if not candidates:
        return
    stored = set(
        ArchivedMessage.objects.filter(
            msgid__in=[p.message.msgid for p in candidates]  # type: ignore[union-attr]
        ).values_list("msgid", flat=True)
    )
    for record in candidates:
        message = record.message
        assert message is not None and message.sdkfileid
        if message.msgid in stored:
            continue
        record.media = _media_download(
            sdk,
            source,
            sdkfileid=message.sdkfileid,
            relative=_media_relative_path(
                source_id=source.pk,
                msgid=message.msgid,
                msgtype=message.msgtype,
                msgtime=message.msgtime,
                raw=message.raw,
            ),
        )


# --- the pull ---------------------------------------------------------------------------------


def archive_pull(*, source_id: int, max_batches: int | None = None) -> ArchivePullResult:
    """Pull everything new for one source (see the module docstring)."""
    result = ArchivePullResult(source_id=source_id)
    source = ArchiveSource.objects.get(pk=source_id)
    result.cursor = source.cursor
    if not source.enabled:
        result.skipped = _("the source is disabled")
        return result
    with _pull_lock(source_id) as acquired:
        if not acquired:
            result.skipped = _("another pull of this source is running")
            return result
        oldest_seen: dt.datetime | None = None
        try:
            with _sdk_open(source) as sdk:
                keys = _private_keys(source, result)
                policies = selectors.policies_for_source(source=source)
                _media_retry(sdk, source, result)
                cursor = source.cursor
                while max_batches is None or result.batches < max_batches:
                    page = sdk.get_chat_data(
                        seq=cursor, limit=source.batch_size, **_sdk_options(source)
                    )
                    items = page["chatdata"]
                    if not items:
                        break
                    result.batches += 1
                    prepared, stopped = _prepare(sdk, items, keys)
                    _media_for_page(sdk, source, prepared)
                    times = [p.message.msgtime for p in prepared if p.message is not None]
                    if times:
                        oldest_seen = min([*times, oldest_seen] if oldest_seen else times)
                    previous = cursor
                    cursor = _store_page(
                        source=source,
                        cursor=cursor,
                        prepared=prepared,
                        policies=policies,
                        result=result,
                    )
                    result.cursor = cursor
                    if stopped is not None:
                        raise stopped
                    if cursor <= previous:
                        raise ArchiveSdkError(
                            BINDING_ERROR, f"GetChatData returned no record after seq {previous}"
                        )
                    if len(items) < source.batch_size:
                        break
        except ArchiveSdkError as exc:
            result.error, result.error_code, result.retryable = str(exc), exc.code, exc.retryable
        except (OSError, DatabaseError) as exc:
            result.error, result.retryable = f"{type(exc).__name__}: {exc}", True
        with deployment_language():
            _health_record(source, result, oldest_seen=oldest_seen)
    return result


def _health_record(
    source: ArchiveSource, result: ArchivePullResult, *, oldest_seen: dt.datetime | None
) -> None:
    """Save the pull's outcome on the source and alert through the log."""
    now = timezone.now()
    fields: dict[str, Any] = {"last_pull_at": now}
    warnings = list(result.warnings)
    if oldest_seen is not None and now - oldest_seen > gap_warning_after():
        age = now - oldest_seen
        warnings.append(
            _(
                "pulled records up to %(days)d days old: WeCom deletes records after 5 days; "
                "pull more often or check for an outage"
            )
            % {"days": age.days}
        )
    if result.quarantined:
        warnings.append(_("%(count)d records quarantined") % {"count": result.quarantined})
    if result.media_pending:
        warnings.append(_("%(count)d media files to retry") % {"count": result.media_pending})
    summary = _(
        "stored %(stored)d, duplicates %(duplicates)d, quarantined %(quarantined)d, "
        "cases %(cases)d, cursor %(cursor)d"
    ) % {
        "stored": result.stored,
        "duplicates": result.duplicates,
        "quarantined": result.quarantined,
        "cases": result.cases,
        "cursor": result.cursor,
    }
    if result.error:
        last_success = source.last_success_at
        if result.error_code == 10010 or (
            last_success is not None and now - last_success > gap_warning_after()
        ):
            warnings.append(
                _("records may be lost: the last successful pull is near the 5-day window")
            )
        fields["health"] = ArchiveSource.Health.ERROR
        failed = _("pull failed: %(error)s") % {"error": result.error}
        fields["status_message"] = "; ".join([failed, summary, *warnings])
        logger.error("archive source %s (%s): %s", source.pk, source.name, fields["status_message"])
    else:
        fields["last_success_at"] = now
        fields["health"] = ArchiveSource.Health.WARNING if warnings else ArchiveSource.Health.OK
        fields["status_message"] = "; ".join([summary, *warnings])
        if warnings:
            logger.warning(
                "archive source %s (%s): %s", source.pk, source.name, fields["status_message"]
            )
    ArchiveSource.objects.filter(pk=source.pk).update(**fields)


def archive_quarantine_retry(
    *, source_id: int, quarantine_ids: list[int] | None = None
) -> ArchivePullResult:
    """Open quarantined records again (e.g. after adding the missing key version).

    Quarantine keeps each record as pulled (still encrypted), so records sealed with a key
    that was added late are recovered even after WeCom has deleted them. Records that open
    are stored like a pull would store them; the others keep their row with the new error.
    """
    result = ArchivePullResult(source_id=source_id)
    source = ArchiveSource.objects.get(pk=source_id)
    result.cursor = source.cursor
    rows = ArchiveQuarantine.objects.filter(source=source).order_by("seq", "pk")
    if quarantine_ids is not None:
        rows = rows.filter(pk__in=quarantine_ids)
    rows = list(rows)
    if not rows:
        return result
    with _pull_lock(source_id) as acquired:
        if not acquired:
            result.skipped = _("another pull of this source is running")
            return result
        try:
            with _sdk_open(source) as sdk:
                keys = _private_keys(source, result)
                prepared, stopped = _prepare(sdk, [row.record for row in rows], keys)
                if stopped is not None:
                    raise stopped
                opened = {p.seq for p in prepared if p.message is not None and p.seq is not None}
                _media_for_page(sdk, source, prepared)
                with transaction.atomic():
                    ArchiveQuarantine.objects.filter(
                        pk__in=[row.pk for row in rows if row.seq is not None and row.seq in opened]
                    ).delete()
                    for row, record in zip(rows, prepared, strict=True):
                        if record.message is None:
                            ArchiveQuarantine.objects.filter(pk=row.pk).update(
                                error=record.error, error_code=record.error_code
                            )
                    _store_page(
                        source=source,
                        cursor=source.cursor,
                        prepared=[p for p in prepared if p.message is not None],
                        policies=selectors.policies_for_source(source=source),
                        result=result,
                        advance_cursor=False,
                    )
        except ArchiveSdkError as exc:
            result.error, result.error_code, result.retryable = str(exc), exc.code, exc.retryable
    result.quarantined = len(rows) - result.stored - result.duplicates
    return result


def archive_gap_check(*, now: dt.datetime | None = None) -> list[ArchiveSource]:
    """Warn about enabled sources whose last successful pull is close to the 5-day window."""
    now = now or timezone.now()
    limit = now - gap_warning_after()
    # A source that never pulled successfully is as late as its age.
    never = Q(last_success_at__isnull=True, created_at__lt=limit)
    late = list(
        ArchiveSource.objects.filter(Q(last_success_at__lt=limit) | never, enabled=True).exclude(
            health=ArchiveSource.Health.ERROR
        )
    )
    for source in late:
        since = source.last_success_at or source.created_at
        with deployment_language():
            if source.last_success_at:
                what = _(
                    "no successful pull since %(time)s UTC; WeCom deletes records after 5 days"
                )
            else:
                what = _("never pulled since %(time)s UTC; WeCom deletes records after 5 days")
        message = what % {"time": f"{since:%Y-%m-%d %H:%M}"}
        logger.error("archive source %s (%s): %s", source.pk, source.name, message)
        ArchiveSource.objects.filter(pk=source.pk).update(
            health=ArchiveSource.Health.WARNING, status_message=message
        )
    return late


def archive_sources_due(*, now: dt.datetime | None = None) -> list[int]:
    """Ids of enabled sources whose pull interval has passed."""
    now = now or timezone.now()
    due = []
    for source in ArchiveSource.objects.filter(enabled=True).only(
        "pk", "last_pull_at", "pull_interval_minutes"
    ):
        interval = dt.timedelta(minutes=source.pull_interval_minutes)
        if source.last_pull_at is None or now - source.last_pull_at >= interval:
            due.append(source.pk)
    return due


def archive_key_fingerprint(pem: str) -> str:
    """SHA-256 of the public half (DER), shown in the admin instead of the private key."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem.encode(), password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(public).hexdigest()

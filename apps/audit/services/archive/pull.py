"""Session archive pulls: fetch, decrypt, store once, check, and move the cursor safely.

`archive_pull` pages through `GetChatData` from the durable cursor. Each page is stored in
one transaction together with the cursor, so the cursor never passes a record that is not
stored (or quarantined with its error). A network error stops the pull where it is; the
next pull resumes after the last stored seq, and the unique msgid keeps a replayed page from
storing anything twice. WeCom deletes records after 5 days, so errors and lag are alerted
(log at ERROR/WARNING and the source's `health`).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.db import DatabaseError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.audit import selectors
from apps.audit.models import ArchiveQuarantine, ArchiveSource
from apps.audit.services.archive.media import media_for_page, media_retry
from apps.audit.services.archive.schedule import gap_warning_after
from apps.audit.services.archive.sdk import (
    ArchivePullResult,
    private_keys,
    pull_lock,
    sdk_open,
    sdk_options,
)
from apps.audit.services.archive.store import page_store, records_prepare
from apps.core.language import deployment_language
from wecom.archive.sdk import BINDING_ERROR, ArchiveSdkError

# One logger for the whole package, as when it was one module.
logger = logging.getLogger(__package__)


def archive_pull(*, source_id: int, max_batches: int | None = None) -> ArchivePullResult:
    """Pull everything new for one source (see the module docstring)."""
    result = ArchivePullResult(source_id=source_id)
    source = ArchiveSource.objects.get(pk=source_id)
    result.cursor = source.cursor
    if not source.enabled:
        result.skipped = _("the source is disabled")
        return result
    with pull_lock(source_id) as acquired:
        if not acquired:
            result.skipped = _("another pull of this source is running")
            return result
        oldest_seen: dt.datetime | None = None
        try:
            with sdk_open(source) as sdk:
                keys = private_keys(source, result)
                policies = selectors.policies_for_source(source=source)
                media_retry(sdk, source, result)
                cursor = source.cursor
                while max_batches is None or result.batches < max_batches:
                    page = sdk.get_chat_data(
                        seq=cursor, limit=source.batch_size, **sdk_options(source)
                    )
                    items = page["chatdata"]
                    if not items:
                        break
                    result.batches += 1
                    prepared, stopped = records_prepare(sdk, items, keys)
                    media_for_page(sdk, source, prepared)
                    times = [p.message.msgtime for p in prepared if p.message is not None]
                    if times:
                        oldest_seen = min([*times, oldest_seen] if oldest_seen else times)
                    previous = cursor
                    cursor = page_store(
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
    with pull_lock(source_id) as acquired:
        if not acquired:
            result.skipped = _("another pull of this source is running")
            return result
        try:
            with sdk_open(source) as sdk:
                keys = private_keys(source, result)
                prepared, stopped = records_prepare(sdk, [row.record for row in rows], keys)
                if stopped is not None:
                    raise stopped
                opened = {p.seq for p in prepared if p.message is not None and p.seq is not None}
                media_for_page(sdk, source, prepared)
                with transaction.atomic():
                    ArchiveQuarantine.objects.filter(
                        pk__in=[row.pk for row in rows if row.seq is not None and row.seq in opened]
                    ).delete()
                    for row, record in zip(rows, prepared, strict=True):
                        if record.message is None:
                            ArchiveQuarantine.objects.filter(pk=row.pk).update(
                                error=record.error, error_code=record.error_code
                            )
                    page_store(
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

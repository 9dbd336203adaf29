"""Media files of archived messages: streamed to MEDIA_ROOT atomically, retried while
the error is transient."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from apps.audit.models import ArchivedMessage, ArchiveSource, LedgerEntry
from apps.audit.services.archive.sdk import ArchivePullResult, sdk_options
from apps.audit.services.archive.store import Prepared
from apps.audit.services.ledger import LedgerRecord, ledger_append_many, object_ref
from wecom.archive.sdk import ArchiveSdkError, FinanceSdk

_MEDIA_RETRY_LIMIT = 100
_MEDIA_EXTENSIONS = {"image": ".jpg", "voice": ".amr", "video": ".mp4"}
_SAFE_EXT = re.compile(r"^[A-Za-z0-9]{1,10}$")


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
            for piece in sdk.iter_media(sdkfileid=sdkfileid, **sdk_options(source)):
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


def media_retry(sdk: FinanceSdk, source: ArchiveSource, result: ArchivePullResult) -> None:
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


def media_for_page(sdk: FinanceSdk, source: ArchiveSource, prepared: list[Prepared]) -> None:
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

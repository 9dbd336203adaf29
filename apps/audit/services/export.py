"""Exports for regulators and investigations: JSONL files plus a manifest.

Review cases also export as CSV or XLSX (one row per case, for officers who work in a
spreadsheet), with the same manifest and access log as the JSONL.

The manifest lists each file's SHA-256 and the ledger head at export time, so a recipient
can check the files arrived whole and later compare the head with the live ledger. Every
exported record gets an access-log row with the reason given.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Model, QuerySet
from django.utils import timezone

from apps.audit.models import AccessLog, ArchivedMessage, ReviewCase
from apps.audit.registry import bot_side_get
from apps.audit.services.access import access_log_record_many
from apps.audit.services.ledger import ledger_head

FORMAT = "wecom-ai-audit-export/1"
MANIFEST_NAME = "manifest.json"
_CHUNK = 1000


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def turn_export_record(turn: Any) -> dict[str, Any]:
    """A bot turn's record is the bots app's to write (`apps.bots.transcripts`)."""
    return bot_side_get().turn_export_record(turn)


def message_export_record(message: ArchivedMessage) -> dict[str, Any]:
    return {
        "type": "archived_message",
        "id": message.pk,
        "source": message.source_id,
        "msgid": message.msgid,
        "seq": message.seq,
        "action": message.action,
        "from": message.sender,
        "tolist": list(message.tolist),
        "roomid": message.roomid,
        "msgtime": _iso(message.msgtime),
        "msgtype": message.msgtype,
        "text": message.text,
        "external": message.external,
        "recalled_at": _iso(message.recalled_at),
        "media": {
            "path": message.media_path,
            "sha256": message.media_sha256,
            "bytes": message.media_size,
        }
        if message.media_path
        else None,
        "purged_at": _iso(message.purged_at),
    }


def case_export_record(case: ReviewCase) -> dict[str, Any]:
    source = None
    if case.turn is not None:
        source = turn_export_record(case.turn)
    elif case.archived_message is not None:
        source = message_export_record(case.archived_message)
    return {
        "type": "review_case",
        "id": case.pk,
        "status": case.status,
        "decision": case.decision,
        "note": case.note,
        "action": case.action,
        "policy": case.policy.name if case.policy else None,
        "matches": case.matches,
        "assignee": case.assignee.get_username() if case.assignee else None,
        "decided_by": case.decided_by.get_username() if case.decided_by else None,
        "created_at": _iso(case.created_at),
        "decided_at": _iso(case.decided_at),
        "source": source,
    }


# The columns of a case in a CSV or XLSX export.
CASE_COLUMNS = (
    "id",
    "created_at",
    "status",
    "action",
    "bot_or_source",
    "user",
    "policy",
    "matched",
    "text",
    "assignee",
    "decision",
    "decided_by",
    "decided_at",
    "note",
)


def case_table_row(case: ReviewCase) -> list[Any]:
    user, text = "", ""
    if case.turn is not None:
        user = case.turn.conversation.userid
        text = f"{case.turn.question}\n---\n{case.turn.answer}"
    elif case.archived_message is not None:
        user, text = case.archived_message.sender, case.archived_message.text
    matched = sorted({str(m.get("word") or m.get("label") or "") for m in case.matches or []})
    return [
        case.pk,
        _iso(case.created_at),
        case.status,
        case.action,
        str(case.bot or case.archive_source or ""),
        user,
        case.policy.name if case.policy else "",
        ", ".join(word for word in matched if word),
        text,
        case.assignee.get_username() if case.assignee else "",
        case.decision,
        case.decided_by.get_username() if case.decided_by else "",
        _iso(case.decided_at) or "",
        case.note,
    ]


def _cell(value: Any) -> Any:
    """Text a spreadsheet would run as a formula is prefixed with ' (CSV/formula injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


EXPORTERS = {
    "cases": (
        "review_cases.jsonl",
        case_export_record,
        (
            "turn__bot",
            "turn__conversation",
            "archived_message",
            "policy",
            "assignee",
            "decided_by",
            "bot",
            "archive_source",
        ),
    ),
    "messages": ("archived_messages.jsonl", message_export_record, ()),
    "turns": ("turns.jsonl", turn_export_record, ("bot", "conversation")),
}


@dataclass(frozen=True, slots=True)
class ExportResult:
    directory: Path
    manifest: dict[str, Any]
    records: int

    @property
    def files(self) -> list[Path]:
        return [self.directory / f["name"] for f in self.manifest["files"]] + [
            self.directory / MANIFEST_NAME
        ]


def _chunks(queryset: QuerySet, related: Iterable[str]) -> Iterator[list[Model]]:
    rows = queryset.select_related(*related).order_by("pk")
    batch: list[Model] = []
    for row in rows.iterator(chunk_size=_CHUNK):
        batch.append(row)
        if len(batch) >= _CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


# Tabular exports: kind -> (columns, row).
TABLES = {"cases": (CASE_COLUMNS, case_table_row)}
FORMATS = ("jsonl", "csv", "xlsx")


class _JsonlWriter:
    def __init__(self, path: Path) -> None:
        self.handle = path.open("wb")

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, cls=DjangoJSONEncoder) + "\n"
        self.handle.write(line.encode())

    def close(self) -> None:
        self.handle.close()


class _TableWriter:
    """Rows to a CSV (UTF-8 with BOM, so Excel reads Chinese) or a streamed XLSX sheet."""

    def __init__(self, path: Path, fmt: str, columns: tuple[str, ...]) -> None:
        self.path, self.fmt = path, fmt
        if fmt == "csv":
            self.handle = path.open("w", encoding="utf-8-sig", newline="")
            self.csv = csv.writer(self.handle)
            self.csv.writerow(columns)
        else:
            from openpyxl import Workbook

            self.book = Workbook(write_only=True)
            self.sheet = self.book.create_sheet("export")
            self.sheet.append(list(columns))

    def add(self, row: Any) -> None:
        cells = [_cell(value) for value in row]
        if self.fmt == "csv":
            self.csv.writerow(cells)
        else:
            self.sheet.append(cells)

    def close(self) -> None:
        if self.fmt == "csv":
            self.handle.close()
        else:
            self.book.save(self.path)


def export_write(
    *,
    kind: str,
    queryset: QuerySet,
    user: Any,
    reason: str,
    directory: Path,
    filters: dict[str, Any] | None = None,
    request_id: str = "",
    fmt: str = "jsonl",
) -> ExportResult:
    """Write `<kind>.<fmt>` and `manifest.json` into `directory`; log every record's export.

    The access-log rows are committed with the export: if writing fails, no row claims an
    export that never happened.
    """
    if kind not in EXPORTERS:
        raise ValueError(f"unknown export kind {kind!r}; choose from {', '.join(EXPORTERS)}")
    if fmt not in FORMATS or (fmt != "jsonl" and kind not in TABLES):
        raise ValueError(f"kind {kind!r} cannot be exported as {fmt!r}")
    if not reason.strip():
        raise ValueError("an export needs a reason")
    file_name, to_record, related = EXPORTERS[kind]
    if fmt != "jsonl":
        file_name = file_name.removesuffix(".jsonl") + f".{fmt}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name
    count = 0
    with transaction.atomic():
        writer: _JsonlWriter | _TableWriter
        to_row: Callable[[Any], Any] = to_record
        if fmt == "jsonl":
            writer = _JsonlWriter(path)
        else:
            columns, to_row = TABLES[kind]
            writer = _TableWriter(path, fmt, columns)
        try:
            for batch in _chunks(queryset, related):
                for row in batch:
                    writer.add(to_row(row))
                count += len(batch)
                access_log_record_many(
                    user=user,
                    objects=batch,
                    action=AccessLog.Action.EXPORT,
                    reason=reason,
                    request_id=request_id,
                )
        finally:
            writer.close()
        head_seq, head_hash = ledger_head()
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    size = path.stat().st_size
    manifest = {
        "format": FORMAT,
        "created_at": timezone.now().isoformat(),
        "created_by": user.get_username() if user is not None else None,
        "reason": reason,
        "kind": kind,
        "filters": filters or {},
        "files": [
            {"name": file_name, "sha256": digest.hexdigest(), "bytes": size, "records": count}
        ],
        "ledger": {"head_seq": head_seq, "head_hash": head_hash},
    }
    (directory / MANIFEST_NAME).write_text(
        json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    )
    return ExportResult(directory=directory, manifest=manifest, records=count)


def export_zip(result: ExportResult) -> bytes:
    """The export's files in one zip, for a download from the admin."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in result.files:
            archive.write(path, arcname=path.name)
    return buffer.getvalue()


def manifest_check(directory: Path) -> list[str]:
    """Problems found re-hashing an export's files against its manifest (empty = intact)."""
    manifest = json.loads((directory / MANIFEST_NAME).read_text())
    problems = []
    for entry in manifest["files"]:
        path = directory / entry["name"]
        if not path.exists():
            problems.append(f"{entry['name']}: missing")
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            problems.append(f"{entry['name']}: SHA-256 does not match the manifest")
    return problems

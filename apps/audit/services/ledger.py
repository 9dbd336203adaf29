"""The append-only ledger: a SHA-256 hash chain over canonical JSON payloads.

Each entry hashes its payload, then hashes (seq, kind, ref, payload hash, previous entry
hash, time) into its own hash, so changing, removing or reordering any entry breaks every
later link. Appends take one transaction-scoped advisory lock, so concurrent writers queue
instead of forking the chain (the unique `prev_hash` would refuse a fork anyway).

Payloads never hold message text: they hold keyed fingerprints of it
(:func:`content_fingerprint`), so retention can purge the text and the chain still verifies.

The chain alone proves nothing against someone who can rewrite the whole table and
recompute every hash. So it is anchored outside the database: each entry and checkpoint
carries an HMAC under `AUDIT_LEDGER_KEY` (a deployment secret, never stored in the
database), and each checkpoint is also appended to `AUDIT_LEDGER_ANCHOR_FILE` (meant for
WORM storage), which a rewrite or a truncated tail then contradicts. The app's database
role may only INSERT and SELECT here (`apps.audit.db_roles`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from apps.audit.models import LedgerCheckpoint, LedgerEntry

GENESIS_HASH = "0" * 64
# pg_advisory_xact_lock key: the first 8 bytes of sha256("apps.audit.ledger"), signed.
LEDGER_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"apps.audit.ledger").digest()[:8], "big", signed=True
)
_VERIFY_CHUNK = 2000


class LedgerPayloadError(TypeError):
    """A payload value whose JSON text would not survive a round trip through jsonb."""


def _check_payload(value: Any, path: str = "payload") -> None:
    """Allow only types whose canonical JSON is stable in PostgreSQL jsonb.

    Floats are refused (jsonb may print 1e20 back as an integer), and so is NUL, which
    jsonb cannot store; callers pass numbers as int and anything else as str.
    """
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise LedgerPayloadError(f"{path} contains a NUL character")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise LedgerPayloadError(f"{path} has a non-string key {key!r}")
            _check_payload(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_payload(item, f"{path}[{index}]")
        return
    raise LedgerPayloadError(f"{path} is a {type(value).__name__}; use int, str, bool or None")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the bytes every hash in the ledger is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _timestamp(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def entry_hash_compute(
    *, seq: int, kind: str, ref: str, payload_hash: str, prev_hash: str, created_at: dt.datetime
) -> str:
    header = {
        "seq": seq,
        "kind": kind,
        "ref": ref,
        "payload_hash": payload_hash,
        "prev_hash": prev_hash,
        "created_at": _timestamp(created_at),
    }
    return sha256_hex(canonical_json(header))


@cache
def _anchor_key_derive(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"apps.audit.ledger-anchor", hashlib.sha256).digest()


def _anchor_key() -> bytes:
    secret = getattr(settings, "AUDIT_LEDGER_KEY", "") or ""
    if not secret:
        raise ImproperlyConfigured("AUDIT_LEDGER_KEY must be set to append to the ledger")
    return _anchor_key_derive(secret)


def entry_mac_compute(*, entry_hash: str) -> str:
    """The entry's anchor: HMAC-SHA-256 of its hash under the ledger key."""
    return hmac.new(_anchor_key(), f"entry:{entry_hash}".encode(), hashlib.sha256).hexdigest()


def checkpoint_mac_compute(*, day: str, seq: int, head_hash: str) -> str:
    """A checkpoint's anchor, over its day, head sequence and head hash."""
    message = b"checkpoint:" + canonical_json({"day": day, "seq": seq, "head_hash": head_hash})
    return hmac.new(_anchor_key(), message, hashlib.sha256).hexdigest()


@cache
def _fingerprint_key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"apps.audit.content-fingerprint", hashlib.sha256).digest()


def content_fingerprint(text: str | bytes | None) -> str | None:
    """A keyed SHA-256 (HMAC) of message content, for ledger payloads.

    Keyed so that a purged short message ("yes", a phone number) cannot be recovered by
    hashing guesses; anyone holding the key can still confirm a copy matches. The key is
    `AUDIT_CONTENT_HASH_KEY`, or one derived from SECRET_KEY when that is not set.
    """
    if text is None:
        return None
    secret = getattr(settings, "AUDIT_CONTENT_HASH_KEY", "") or settings.SECRET_KEY
    data = text.encode() if isinstance(text, str) else text
    return hmac.new(_fingerprint_key(secret), data, hashlib.sha256).hexdigest()


def object_ref(obj: Model) -> str:
    return f"{obj._meta.label_lower}:{obj.pk}"


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One entry to append: what kind, which object, what payload."""

    kind: str
    ref: str
    payload: Mapping[str, Any]


def ledger_append_many(*, records: Sequence[LedgerRecord]) -> list[LedgerEntry]:
    """Append several entries under one lock, in order; for batches (archive pulls, purges).

    Runs inside the caller's transaction when there is one, so the entries commit or roll
    back with the change they record; the advisory lock is held until that commit.
    """
    if not records:
        return []
    for record in records:
        _check_payload(record.payload)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LEDGER_LOCK_KEY])
        head = LedgerEntry.objects.order_by("-seq").values_list("seq", "entry_hash").first()
        seq, prev_hash = head if head else (0, GENESIS_HASH)
        entries = []
        now = timezone.now()
        for record in records:
            seq += 1
            payload = json.loads(canonical_json(record.payload))
            payload_hash = sha256_hex(canonical_json(payload))
            entry = LedgerEntry(
                seq=seq,
                kind=record.kind,
                ref=record.ref,
                payload=payload,
                payload_hash=payload_hash,
                prev_hash=prev_hash,
                created_at=now,
            )
            entry.entry_hash = entry_hash_compute(
                seq=seq,
                kind=record.kind,
                ref=record.ref,
                payload_hash=payload_hash,
                prev_hash=prev_hash,
                created_at=now,
            )
            entry.entry_mac = entry_mac_compute(entry_hash=entry.entry_hash)
            prev_hash = entry.entry_hash
            entries.append(entry)
        return LedgerEntry.objects.bulk_create(entries)


def ledger_append(*, kind: str, ref: str, payload: Mapping[str, Any]) -> LedgerEntry:
    """Append one entry to the chain (see :func:`ledger_append_many`)."""
    return ledger_append_many(records=[LedgerRecord(kind=kind, ref=ref, payload=payload)])[0]


def _iso(moment: dt.datetime | None) -> str | None:
    return _timestamp(moment) if moment else None


def turn_ledger_payload(
    *,
    turn: Any,
    decisions: Iterable[Mapping[str, Any]] = (),
    delivery: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What the ledger keeps of a turn: who, when, which model, fingerprints, outcomes."""
    conversation = turn.conversation
    profile = turn.bot.model_profile
    return {
        "turn": turn.pk,
        "bot": {"id": turn.bot_id, "slug": turn.bot.slug},
        "msgid": turn.msgid,
        "conversation": {
            "id": conversation.pk,
            "chat_type": conversation.chat_type,
            "chat_id": conversation.chat_id,
            "userid": conversation.userid,
        },
        "model_profile": {"id": profile.pk, "name": profile.name, "gguf_path": profile.gguf_path},
        # The prompt version: a hash of the system prompt the answer was generated under.
        "system_prompt_sha256": sha256_hex(turn.bot.system_prompt.encode()),
        "question_hmac": content_fingerprint(turn.question),
        "answer_hmac": content_fingerprint(turn.answer),
        "reasoning_hmac": content_fingerprint(turn.reasoning) if turn.reasoning else None,
        "status": turn.status,
        "rejection_reason": turn.rejection_reason,
        "tokens": {"prompt": turn.prompt_tokens, "completion": turn.completion_tokens},
        "received_at": _iso(turn.received_at),
        "finished_at": _iso(turn.finished_at),
        "filter_decisions": [dict(decision) for decision in decisions],
        # Which knowledge passages (chunk ids and document versions) grounded the answer.
        "sources": [
            {key: source.get(key) for key in ("chunk", "document", "document_version")}
            for source in getattr(turn, "sources", None) or []
        ],
        "delivery": dict(delivery)
        if delivery is not None
        else {
            "stream_closed_at": _iso(turn.stream_closed_at),
            "response_url_used_at": _iso(turn.response_url_used_at),
        },
    }


def ledger_record_turn(
    *,
    turn: Any,
    decisions: Iterable[Mapping[str, Any]] = (),
    delivery: Mapping[str, Any] | None = None,
) -> LedgerEntry:
    """Record a finished turn; `decisions` are `PolicyDecision.as_record()` dicts."""
    return ledger_append(
        kind=LedgerEntry.Kind.TURN,
        ref=object_ref(turn),
        payload=turn_ledger_payload(turn=turn, decisions=decisions, delivery=delivery),
    )


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerVerification:
    ok: bool
    count: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    problem: str = ""
    anchors: int = 0


@dataclass(frozen=True, slots=True)
class _Anchor:
    day: str
    seq: int
    head_hash: str
    where: str


class _AnchorError(Exception):
    """A checkpoint (in the database or the anchor file) not signed with the ledger key."""


def _anchors_load(anchor_file: str) -> list[_Anchor]:
    """The exported checkpoints; each line must carry a valid MAC."""
    anchors = []
    try:
        with open(anchor_file, encoding="utf-8") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{os.path.basename(anchor_file)} line {number}"
        try:
            record = json.loads(line)
            day, seq, head_hash, mac = (
                record["day"],
                record["seq"],
                record["head_hash"],
                record["mac"],
            )
            if not (isinstance(seq, int) and isinstance(day, str) and isinstance(mac, str)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise _AnchorError(f"{where} is not an anchor record") from None
        expected = checkpoint_mac_compute(day=day, seq=seq, head_hash=str(head_hash))
        if not hmac.compare_digest(expected, mac):
            raise _AnchorError(f"{where} is not signed with AUDIT_LEDGER_KEY")
        anchors.append(_Anchor(day=day, seq=seq, head_hash=str(head_hash), where=where))
    return anchors


def _checkpoints_load() -> list[_Anchor]:
    anchors = []
    for day, seq, head_hash, mac in LedgerCheckpoint.objects.values_list(
        "day", "seq", "head_hash", "mac"
    ):
        expected = checkpoint_mac_compute(day=day.isoformat(), seq=seq, head_hash=head_hash)
        if not hmac.compare_digest(expected, mac):
            raise _AnchorError(f"the checkpoint of {day} is not signed with AUDIT_LEDGER_KEY")
        anchors.append(_Anchor(day=day.isoformat(), seq=seq, head_hash=head_hash, where=""))
    return anchors


def ledger_verify(*, anchor_file: str | None = None) -> LedgerVerification:
    """Recompute every hash, link and anchor MAC, then compare the checkpoints (in the
    database and in the exported anchor file) with the chain."""
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    try:
        exported = _anchors_load(anchor_file or settings.AUDIT_LEDGER_ANCHOR_FILE)
        checkpoints = _checkpoints_load() + exported
    except _AnchorError as exc:
        return LedgerVerification(
            ok=False, count=0, head_seq=0, head_hash=GENESIS_HASH, problem=str(exc)
        )
    expected_at: dict[int, list[_Anchor]] = {}
    for anchor in checkpoints:
        expected_at.setdefault(anchor.seq, []).append(anchor)
    rows = (
        LedgerEntry.objects.order_by("seq")
        .values_list(
            "seq",
            "kind",
            "ref",
            "payload",
            "payload_hash",
            "prev_hash",
            "entry_hash",
            "entry_mac",
            "created_at",
        )
        .iterator(chunk_size=_VERIFY_CHUNK)
    )

    def broken(seq: int, problem: str) -> LedgerVerification:
        return LedgerVerification(
            ok=False,
            count=count,
            head_seq=expected_seq - 1,
            head_hash=prev_hash,
            broken_seq=seq,
            problem=problem,
            anchors=len(exported),
        )

    for seq, kind, ref, payload, payload_hash, stored_prev, stored_hash, mac, created_at in rows:
        if seq != expected_seq:
            return broken(expected_seq, f"entry #{expected_seq} is missing (next is #{seq})")
        if sha256_hex(canonical_json(payload)) != payload_hash:
            return broken(seq, f"entry #{seq}: payload does not match its payload_hash")
        if stored_prev != prev_hash:
            return broken(seq, f"entry #{seq}: prev_hash does not link to entry #{seq - 1}")
        recomputed = entry_hash_compute(
            seq=seq,
            kind=kind,
            ref=ref,
            payload_hash=payload_hash,
            prev_hash=stored_prev,
            created_at=created_at,
        )
        if recomputed != stored_hash:
            return broken(seq, f"entry #{seq}: entry_hash does not match its contents")
        if not hmac.compare_digest(entry_mac_compute(entry_hash=stored_hash), mac):
            return broken(
                seq, f"entry #{seq}: its anchor MAC does not match (written without the key)"
            )
        for anchor in expected_at.get(seq, ()):
            if anchor.head_hash != stored_hash:
                where = f" ({anchor.where})" if anchor.where else ""
                problem = f"entry #{seq}: differs from the checkpoint recorded for it{where}"
                return broken(seq, problem)
        prev_hash, count, expected_seq = stored_hash, count + 1, seq + 1
    head_seq = expected_seq - 1
    beyond = [seq for seq in expected_at if seq > head_seq]
    if beyond:
        return broken(min(beyond), f"entry #{min(beyond)} is checkpointed but missing")
    return LedgerVerification(
        ok=True, count=count, head_seq=head_seq, head_hash=prev_hash, anchors=len(exported)
    )


def ledger_head() -> tuple[int, str]:
    """(seq, entry_hash) of the newest entry, (0, genesis) for an empty ledger."""
    head = LedgerEntry.objects.order_by("-seq").values_list("seq", "entry_hash").first()
    return head if head else (0, GENESIS_HASH)


def ledger_checkpoint_write(*, day: dt.date | None = None) -> LedgerCheckpoint:
    """Record today's head once (a second call the same day returns the first record), and
    export it to the anchor file, where the database cannot reach it."""
    day = day or timezone.localdate()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LEDGER_LOCK_KEY])
        seq, head_hash = ledger_head()
        checkpoint, _created = LedgerCheckpoint.objects.get_or_create(
            day=day,
            defaults={
                "seq": seq,
                "head_hash": head_hash,
                "mac": checkpoint_mac_compute(day=day.isoformat(), seq=seq, head_hash=head_hash),
            },
        )
    ledger_anchor_export(checkpoint=checkpoint)
    return checkpoint


def ledger_anchor_export(*, checkpoint: LedgerCheckpoint, anchor_file: str | None = None) -> bool:
    """Append the checkpoint to the anchor file unless it is there already (a crash between
    the commit and this write is repaired by the next run). Returns whether it wrote."""
    path = anchor_file or settings.AUDIT_LEDGER_ANCHOR_FILE
    day = checkpoint.day.isoformat()
    try:
        with open(path, encoding="utf-8") as handle:
            if any(f'"day":"{day}"' in line for line in handle):
                return False
    except FileNotFoundError:
        pass
    record = {
        "day": day,
        "seq": checkpoint.seq,
        "head_hash": checkpoint.head_hash,
        "mac": checkpoint.mac
        or checkpoint_mac_compute(day=day, seq=checkpoint.seq, head_hash=checkpoint.head_hash),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, canonical_json(record) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return True

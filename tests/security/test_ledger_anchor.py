"""Issue 9, item 6: a ledger rewritten with full database access (owner or superuser,
triggers off, every hash recomputed, checkpoints deleted) no longer verifies, because its
anchors (entry MACs under AUDIT_LEDGER_KEY, and checkpoints exported to a file) are outside
the database."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.audit.models import LedgerCheckpoint, LedgerEntry
from apps.audit.services.ledger import (
    canonical_json,
    entry_hash_compute,
    ledger_append,
    ledger_checkpoint_write,
    ledger_verify,
    sha256_hex,
)

pytestmark = pytest.mark.django_db(transaction=True)


def append(count: int) -> None:
    for number in range(1, count + 1):
        ledger_append(kind=LedgerEntry.Kind.TURN, ref=f"bots.turn:{number}", payload={"n": number})


def audit_verify() -> str:
    out = StringIO()
    call_command("audit_verify", stdout=out)
    return out.getvalue()


def rewrite_from(owner_sql, seq: int) -> None:
    """Change entry `seq` and recompute every hash from it on, as the owner with the
    triggers off; then delete the checkpoints that would contradict the new chain."""
    statements: list = ["ALTER TABLE audit_ledgerentry DISABLE TRIGGER ALL"]
    prev = LedgerEntry.objects.get(seq=seq - 1).entry_hash if seq > 1 else "0" * 64
    for entry in LedgerEntry.objects.filter(seq__gte=seq).order_by("seq"):
        payload = {"n": 4242} if entry.seq == seq else entry.payload
        payload_hash = sha256_hex(canonical_json(payload))
        entry_hash = entry_hash_compute(
            seq=entry.seq,
            kind=entry.kind,
            ref=entry.ref,
            payload_hash=payload_hash,
            prev_hash=prev,
            created_at=entry.created_at,
        )
        statements.append(
            (
                "UPDATE audit_ledgerentry SET payload = %s::jsonb, payload_hash = %s, "
                "prev_hash = %s, entry_hash = %s WHERE seq = %s",
                [json.dumps(payload), payload_hash, prev, entry_hash, entry.seq],
            )
        )
        prev = entry_hash
    statements += [
        "ALTER TABLE audit_ledgerentry ENABLE TRIGGER ALL",
        "ALTER TABLE audit_ledgercheckpoint DISABLE TRIGGER ALL",
        "DELETE FROM audit_ledgercheckpoint",
        "ALTER TABLE audit_ledgercheckpoint ENABLE TRIGGER ALL",
    ]
    owner_sql(*statements)


def test_rewrite_with_full_database_access_fails_audit_verify(owner_sql) -> None:
    # Given an intact ledger that verifies
    append(4)
    assert "ledger OK: 4 entries" in audit_verify()
    # When someone with full database access rewrites entry 2 and every hash after it,
    # and removes the checkpoints (the old attack: audit_verify still passed)
    rewrite_from(owner_sql, 2)
    assert LedgerEntry.objects.get(seq=2).payload == {"n": 4242}
    # Then audit_verify exits 1 at entry 2: its MAC needs a key the database does not hold
    with pytest.raises(CommandError, match=r"#2.*anchor MAC") as caught:
        audit_verify()
    assert caught.value.returncode == 1


def test_truncated_tail_is_caught_by_the_exported_anchor(owner_sql) -> None:
    # Given five entries and a checkpoint exported to the anchor file
    append(5)
    checkpoint = ledger_checkpoint_write()
    exported = Path(settings.AUDIT_LEDGER_ANCHOR_FILE).read_text().splitlines()
    assert json.loads(exported[0])["seq"] == checkpoint.seq == 5
    # When the last two entries and the database's checkpoint are deleted (what remains is
    # a valid, correctly keyed chain of three)
    owner_sql(
        "ALTER TABLE audit_ledgerentry DISABLE TRIGGER ALL",
        "DELETE FROM audit_ledgerentry WHERE seq > 3",
        "ALTER TABLE audit_ledgerentry ENABLE TRIGGER ALL",
        "ALTER TABLE audit_ledgercheckpoint DISABLE TRIGGER ALL",
        "DELETE FROM audit_ledgercheckpoint",
        "ALTER TABLE audit_ledgercheckpoint ENABLE TRIGGER ALL",
    )
    assert not LedgerCheckpoint.objects.exists()
    # Then verification against the exported anchors fails, naming the missing entry
    result = ledger_verify()
    assert not result.ok and result.broken_seq == 5 and "checkpointed but missing" in result.problem
    with pytest.raises(CommandError, match="#5"):
        audit_verify()


def test_forged_anchor_line_is_refused(tmp_path: Path) -> None:
    # Given an anchor file with a line not signed by the ledger key
    append(2)
    forged = tmp_path / "forged.jsonl"
    forged.write_text(
        json.dumps({"day": "2026-01-01", "seq": 1, "head_hash": "0" * 64, "mac": "f" * 64}) + "\n"
    )
    # Then verification refuses it rather than trusting it
    result = ledger_verify(anchor_file=str(forged))
    assert not result.ok and "not signed" in result.problem
    with pytest.raises(CommandError, match="not signed"):
        call_command("audit_verify", "--anchors", str(forged), stdout=StringIO())


def test_checkpoint_export_is_written_once_and_repaired_after_a_crash() -> None:
    append(1)
    checkpoint = ledger_checkpoint_write()
    path = Path(settings.AUDIT_LEDGER_ANCHOR_FILE)
    assert len(path.read_text().splitlines()) == 1
    ledger_checkpoint_write()
    assert len(path.read_text().splitlines()) == 1
    # The file was lost after the commit: the next run writes the day's line again
    path.unlink()
    assert ledger_checkpoint_write() == checkpoint
    assert json.loads(path.read_text())["head_hash"] == checkpoint.head_hash
    assert "1 exported anchors checked" in audit_verify()

"""The ledger: hash chain, append-only triggers, verification, checkpoints, concurrency."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from apps.audit.models import LedgerCheckpoint, LedgerEntry
from apps.audit.services.ledger import (
    GENESIS_HASH,
    LedgerPayloadError,
    canonical_json,
    entry_hash_compute,
    ledger_append,
    ledger_checkpoint_write,
    ledger_verify,
    sha256_hex,
)

pytestmark = pytest.mark.django_db


def append(count: int, *, start: int = 1) -> list[LedgerEntry]:
    return [
        ledger_append(
            kind=LedgerEntry.Kind.TURN,
            ref=f"bots.turn:{number}",
            payload={"turn": number, "question_hmac": f"{number:064x}", "tags": ["a", "b"]},
        )
        for number in range(start, start + count)
    ]


def verify_command() -> str:
    from io import StringIO

    out = StringIO()
    call_command("audit_verify", stdout=out)
    return out.getvalue()


@pytest.fixture
def run_sql_without_triggers(owner_sql):
    """What an attacker with the owner's or a superuser's rights would do: edit with the
    triggers off (the app's own role can do neither)."""

    def run(sql: str, params: list | None = None) -> None:
        owner_sql(
            "ALTER TABLE audit_ledgerentry DISABLE TRIGGER ALL",
            (sql, params or []),
            "ALTER TABLE audit_ledgerentry ENABLE TRIGGER ALL",
        )

    return run


def test_entries_link_into_a_chain_and_verify_reports_count_and_head() -> None:
    # Given three appended entries
    entries = append(3)
    # Then each links to the previous one, starting from the genesis hash
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in entries[1:]] == [e.entry_hash for e in entries[:2]]
    stored = LedgerEntry.objects.get(seq=2)
    assert stored.payload_hash == sha256_hex(canonical_json(stored.payload))
    assert stored.entry_hash == entry_hash_compute(
        seq=2,
        kind=stored.kind,
        ref=stored.ref,
        payload_hash=stored.payload_hash,
        prev_hash=stored.prev_hash,
        created_at=stored.created_at,
    )
    # And audit_verify passes, printing the count and the head hash
    output = verify_command()
    assert "3 entries" in output and entries[-1].entry_hash in output


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_ledgerentry SET ref = 'bots.turn:999' WHERE seq = 1",
        "DELETE FROM audit_ledgerentry WHERE seq = 2",
        "TRUNCATE audit_ledgerentry",
        "UPDATE audit_ledgercheckpoint SET head_hash = 'x'",
    ],
)
def test_database_refuses_to_change_or_remove_entries(statement: str) -> None:
    # Given a ledger with entries and a checkpoint
    append(2)
    ledger_checkpoint_write()
    # When the application's own database role tries to rewrite history
    with (
        # The app role lacks the privilege; an owner would still hit the trigger.
        pytest.raises(DatabaseError, match=r"append-only|permission denied"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    # Then nothing changed
    assert list(LedgerEntry.objects.order_by("seq").values_list("ref", flat=True)) == [
        "bots.turn:1",
        "bots.turn:2",
    ]
    assert ledger_verify().ok


def test_verify_names_the_first_entry_edited_behind_the_triggers_back(
    run_sql_without_triggers,
) -> None:
    # Given an intact chain of five entries
    append(5)
    # When someone with superuser rights disables the triggers and edits entry 3's payload
    run_sql_without_triggers(
        "UPDATE audit_ledgerentry SET payload = jsonb_set(payload, '{turn}', '42') WHERE seq = 3"
    )
    # Then audit_verify exits 1 naming entry 3
    with pytest.raises(CommandError, match="#3") as caught:
        verify_command()
    assert caught.value.returncode == 1
    result = ledger_verify()
    assert (result.ok, result.broken_seq, result.count) == (False, 3, 2)


def test_removed_entry_breaks_the_sequence(run_sql_without_triggers) -> None:
    append(4)
    run_sql_without_triggers("DELETE FROM audit_ledgerentry WHERE seq = 2")
    result = ledger_verify()
    assert not result.ok and result.broken_seq == 2 and "missing" in result.problem


def test_anchor_catches_a_chain_rewritten_with_fresh_hashes(run_sql_without_triggers) -> None:
    # Given a checkpoint of the head after three entries
    append(3)
    checkpoint = ledger_checkpoint_write()
    assert (checkpoint.seq, checkpoint.head_hash) == (3, LedgerEntry.objects.get(seq=3).entry_hash)
    assert ledger_checkpoint_write() == checkpoint  # once a day
    # When entry 2 is changed and every hash from it on is recomputed consistently
    run_sql_without_triggers(
        "UPDATE audit_ledgerentry SET payload = jsonb_set(payload, '{turn}', '42') WHERE seq = 2"
    )
    prev = LedgerEntry.objects.get(seq=1).entry_hash
    for entry in LedgerEntry.objects.filter(seq__gte=2).order_by("seq"):
        payload_hash = sha256_hex(canonical_json(entry.payload))
        entry_hash = entry_hash_compute(
            seq=entry.seq,
            kind=entry.kind,
            ref=entry.ref,
            payload_hash=payload_hash,
            prev_hash=prev,
            created_at=entry.created_at,
        )
        run_sql_without_triggers(
            "UPDATE audit_ledgerentry SET payload_hash = %s, prev_hash = %s, entry_hash = %s "
            "WHERE seq = %s",
            [payload_hash, prev, entry_hash, entry.seq],
        )
        prev = entry_hash
    # Then the chain is self-consistent, but the rewritten entry's anchor MAC (keyed with
    # AUDIT_LEDGER_KEY, which is not in the database) no longer matches
    result = ledger_verify()
    assert not result.ok and result.broken_seq == 2 and "anchor MAC" in result.problem


def test_payloads_that_jsonb_would_alter_are_refused() -> None:
    with pytest.raises(LedgerPayloadError, match="float"):
        ledger_append(kind="turn", ref="bots.turn:1", payload={"score": 0.5})
    with pytest.raises(LedgerPayloadError, match="NUL"):
        ledger_append(kind="turn", ref="bots.turn:1", payload={"text": "a\x00b"})
    assert not LedgerEntry.objects.exists()


@pytest.fixture
def ledger_emptied(transactional_db: None) -> Iterator[None]:
    """Transactional tests commit entries; the owner's flush (conftest) empties the ledger."""
    yield


def test_concurrent_appends_keep_a_single_chain(ledger_emptied: None) -> None:
    # Given four writers that start appending at the same moment, each in its own connection
    writers, per_writer = 4, 8
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        try:
            barrier.wait()
            for number in range(per_writer):
                with transaction.atomic():
                    ledger_append(
                        kind=LedgerEntry.Kind.TURN,
                        ref=f"bots.turn:{writer}-{number}",
                        payload={"writer": writer, "number": number},
                    )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every append landed, with contiguous seqs and one unbroken chain
    assert errors == []
    seqs = list(LedgerEntry.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, writers * per_writer + 1))
    result = ledger_verify()
    assert result.ok and result.count == writers * per_writer
    assert LedgerCheckpoint.objects.count() == 0

"""Exports: JSONL plus a manifest whose hashes match the files, scoped and access-logged."""

from __future__ import annotations

import hashlib
import json
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.audit.models import AccessLog, ArchivedMessage, ArchiveSource
from apps.audit.services.export import manifest_check
from apps.audit.services.ledger import ledger_append, ledger_head

pytestmark = pytest.mark.django_db


@pytest.fixture
def messages() -> list[ArchivedMessage]:
    sources = [
        ArchiveSource.objects.create(name=name, corp_id=name, secret="s")
        for name in ("总部", "分部")
    ]
    return [
        ArchivedMessage.objects.create(
            source=sources[number % 2],
            msgid=f"m{number}",
            seq=number,
            publickey_ver=1,
            action="send",
            sender="zhangsan",
            tolist=["lisi"],
            msgtime=timezone.now(),
            msgtype="text",
            text=f"消息{number}\n含换行",
        )
        for number in range(6)
    ]


def export(out: Path, *args: str) -> str:
    stdout = StringIO()
    call_command("audit_export", "messages", "--out", str(out), *args, stdout=stdout)
    return stdout.getvalue()


def test_export_writes_jsonl_and_a_manifest_that_hashes_it(messages, tmp_path: Path) -> None:
    # Given an officer assigned to one of two archive sources, and a ledger with a head
    officer = User.objects.create_user("officer", is_staff=True)
    assign_perm("audit.review_archivesource", officer, messages[0].source)
    ledger_append(kind="turn", ref="bots.turn:1", payload={"a": 1})
    # When the officer's export is made
    out = tmp_path / "export"
    output = export(out, "--user", "officer", "--reason", "监管调取 2024-17")
    # Then the file holds the source's three messages, one JSON object per line
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["files"]
    data = (out / entry["name"]).read_bytes()
    records = [json.loads(line) for line in data.decode().splitlines()]
    assert "3 records" in output and [r["msgid"] for r in records] == ["m0", "m2", "m4"]
    assert records[0]["text"] == "消息0\n含换行"
    # And the manifest's hash, size and count match the file, with the ledger head
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert (entry["bytes"], entry["records"]) == (len(data), 3)
    assert manifest["ledger"] == dict(zip(("head_seq", "head_hash"), ledger_head(), strict=True))
    assert manifest_check(out) == []
    # And each exported record has an access-log row with the reason
    logs = AccessLog.objects.filter(action="export", username="officer")
    assert sorted(logs.values_list("object_id", flat=True)) == sorted(
        str(m.pk) for m in messages[::2]
    )
    assert set(logs.values_list("reason", flat=True)) == {"监管调取 2024-17"}
    # And a file changed after export no longer matches its manifest
    (out / entry["name"]).write_bytes(data.replace("消息0".encode(), "消息9".encode()))
    assert manifest_check(out) == [f"{entry['name']}: SHA-256 does not match the manifest"]


def test_export_needs_a_known_user_and_a_reason(messages, tmp_path: Path) -> None:
    User.objects.create_user("officer", is_staff=True)
    with pytest.raises(CommandError, match="no user"):
        export(tmp_path / "a", "--user", "nobody", "--reason", "audit request")
    with pytest.raises(CommandError, match="reason"):
        export(tmp_path / "b", "--user", "officer", "--reason", " ")
    assert not AccessLog.objects.exists()

"""Session archive pulls end to end against the compiled stand-in of the vendor SDK."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import (
    Action,
    ArchivedMessage,
    ArchiveKey,
    ArchiveQuarantine,
    ArchiveSource,
    AuditPolicy,
    LedgerEntry,
    PolicyWordList,
    ReviewCase,
    SensitiveWordList,
)
from apps.audit.services.archive import (
    archive_gap_check,
    archive_pull,
    archive_quarantine_retry,
)
from apps.audit.services.ledger import ledger_verify
from tests.wecomsdk.build import (
    FIXTURE_ENV,
    FixtureRecord,
    build_test_sdk,
    sdk_env_for,
    sdk_settings_for,
    write_fixture,
)

pytestmark = pytest.mark.django_db

CORP_ID = "wwarchivetest"
SECRET = "archive-secret-for-tests"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_sdk(tmp_path_factory.mktemp("testsdk"))


@pytest.fixture(scope="module")
def keys() -> dict[int, rsa.RSAPrivateKey]:
    return {v: rsa.generate_private_key(public_exponent=65537, key_size=2048) for v in (1, 2, 3)}


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def source(library: Path, keys: dict[int, rsa.RSAPrivateKey], settings, tmp_path) -> ArchiveSource:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    for name, value in sdk_settings_for(library).items():
        setattr(settings, name, value)
    source = ArchiveSource.objects.create(name="总部", corp_id=CORP_ID, secret=SECRET, batch_size=4)
    for version in (1, 2):  # no private key for version 3
        ArchiveKey.objects.create(
            source=source, publickey_ver=version, private_key=pem(keys[version])
        )
    flagged = SensitiveWordList.objects.create(name="泄密", words="绝密")
    policy = AuditPolicy.objects.create(name="存档检查")
    PolicyWordList.objects.create(policy=policy, word_list=flagged, action=Action.FLAG)
    policy.archive_sources.add(source)
    return source


Serve = Callable[..., None]


@pytest.fixture
def serve(keys, tmp_path, monkeypatch) -> Serve:
    """Point the stand-in SDK at a fixture holding `records` (rewritable between pulls)."""

    def write(records: list[FixtureRecord], **options: Any) -> None:
        fixture = tmp_path / "fixture.txt"
        write_fixture(
            fixture,
            records,
            public_keys={v: key.public_key() for v, key in keys.items()},
            corp_id=CORP_ID,
            secret=SECRET,
            **options,
        )
        monkeypatch.setenv(FIXTURE_ENV, str(fixture))

    return write


def message(number: int, *, age: dt.timedelta = dt.timedelta(hours=1), **fields: Any) -> dict:
    sent = timezone.now() - age + dt.timedelta(seconds=number)
    body = {
        "msgid": f"msg{number}",
        "action": "send",
        "from": "zhangsan",
        "tolist": ["lisi"],
        "roomid": "",
        "msgtime": int(sent.timestamp() * 1000),
        "msgtype": "text",
        "text": {"content": f"第{number}条消息"},
    }
    body.update(fields)
    return {key: value for key, value in body.items() if value is not None}


def source_media_root() -> str:
    from django.conf import settings

    return settings.MEDIA_ROOT


def test_pull_stores_decrypts_checks_and_quarantines(
    source: ArchiveSource, serve: Serve, keys: dict[int, rsa.RSAPrivateKey]
) -> None:
    # Given nine records: a key-version change, a flagged text, an image, a recall, a
    # malformed message, one sealed with an unknown key version and one undecryptable
    media = b"\x00\x01" * 700 + b"\x00" * 100
    records = [
        FixtureRecord(message(1), publickey_ver=1),
        FixtureRecord(message(2, text={"content": "这是绝密资料"}), publickey_ver=1),
        FixtureRecord(
            message(3, msgtype="image", text=None, image={"sdkfileid": "FILE3"}), publickey_ver=1
        ),
        FixtureRecord(message(4), publickey_ver=2),
        FixtureRecord(
            message(5, action="recall", msgtype="revoke", text=None, revoke={"pre_msgid": "msg1"}),
            publickey_ver=2,
        ),
        FixtureRecord(message(6, text={"content": 12}), publickey_ver=2),
        FixtureRecord(message(7), publickey_ver=3),
        FixtureRecord(message(8), publickey_ver=2),
        FixtureRecord(message(9), publickey_ver=2),
    ]
    serve(records, media={"FILE3": media}, media_piece_size=600, undecryptable_msgids={"msg8"})
    # When the source is pulled (batches of 4)
    result = archive_pull(source_id=source.pk)
    # Then six messages are stored, three quarantined with their errors, the cursor is at 9
    assert result.ok, result.error
    assert (result.batches, result.stored, result.quarantined, result.cursor) == (3, 6, 3, 9)
    stored = {m.msgid: m for m in ArchivedMessage.objects.all()}
    assert sorted(stored) == ["msg1", "msg2", "msg3", "msg4", "msg5", "msg9"]
    assert (stored["msg4"].publickey_ver, stored["msg4"].text) == (2, "第4条消息")
    quarantined = {q.seq: q for q in ArchiveQuarantine.objects.all()}
    assert sorted(quarantined) == [6, 7, 8]
    assert "content" in quarantined[6].error
    assert "publickey_ver=3" in quarantined[7].error
    assert quarantined[8].error_code == 10006
    assert quarantined[7].record["msgid"] == "msg7"  # the encrypted record, for a retry
    # And the recall marks the original; the image is on disk with its hash
    assert stored["msg1"].recalled_at is not None
    assert stored["msg5"].revoked_msgid == "msg1"
    image = stored["msg3"]
    assert image.media_status == ArchivedMessage.MediaStatus.STORED
    assert (Path(source_media_root()) / image.media_path).read_bytes() == media
    assert image.media_sha256 == hashlib.sha256(media).hexdigest()
    # And the flagged text opened a case in the source's scope, with the policy result stored
    case = ReviewCase.objects.get()
    assert (case.archived_message, case.archive_source, case.action) == (
        stored["msg2"],
        source,
        Action.FLAG,
    )
    assert stored["msg2"].policy_action == Action.FLAG
    # And every stored message has a ledger entry keeping fingerprints, not text
    entries = LedgerEntry.objects.filter(kind=LedgerEntry.Kind.ARCHIVE_MESSAGE)
    assert entries.count() == 6
    assert "绝密资料" not in str(list(entries.values_list("payload", flat=True)))
    assert ledger_verify().ok
    source.refresh_from_db()
    assert source.cursor == 9 and source.health == ArchiveSource.Health.WARNING
    assert "3 条记录已隔离" in source.status_message  # the deployment language, zh-hans

    # When the same records are served again from an earlier cursor
    ArchiveSource.objects.filter(pk=source.pk).update(cursor=0)
    again = archive_pull(source_id=source.pk)
    # Then nothing is stored, quarantined or logged twice
    assert (again.stored, again.duplicates, again.cursor) == (0, 6, 9)
    assert ArchivedMessage.objects.count() == 6 and ArchiveQuarantine.objects.count() == 3
    assert entries.count() == 6 and ReviewCase.objects.count() == 1

    # When the private key of version 3 is added and the quarantine is retried
    ArchiveKey.objects.create(source=source, publickey_ver=3, private_key=pem(keys[3]))
    retried = archive_quarantine_retry(source_id=source.pk)
    # Then msg7 is stored from its kept encrypted record; the broken ones stay quarantined
    assert (retried.stored, retried.quarantined) == (1, 2)
    assert ArchivedMessage.objects.get(msgid="msg7").text == "第7条消息"
    assert sorted(ArchiveQuarantine.objects.values_list("seq", flat=True)) == [6, 8]
    assert entries.count() == 7 and ledger_verify().ok


def test_network_error_mid_pull_keeps_the_cursor_at_what_is_stored(
    source: ArchiveSource, serve: Serve
) -> None:
    # Given five records, an image among them, and a network that fails on the second page
    # and in the middle of the image download
    content = bytes(range(256)) * 10
    records = [FixtureRecord(message(n), publickey_ver=1) for n in (1, 3, 4, 5)]
    records.insert(
        1,
        FixtureRecord(
            message(2, msgtype="file", text=None, file={"sdkfileid": "F2", "fileext": "pdf"}),
            publickey_ver=1,
        ),
    )
    ArchiveSource.objects.filter(pk=source.pk).update(batch_size=2)
    options = {"media": {"F2": content}, "media_piece_size": 1000}
    serve(records, chat_errors={2: 10001}, media_errors={2: 10001}, **options)
    # When the source is pulled
    first = archive_pull(source_id=source.pk)
    # Then the first page is stored, the cursor stops after it and the error is reported
    assert (first.stored, first.cursor, first.error_code, first.retryable) == (2, 2, 10001, True)
    source.refresh_from_db()
    assert source.cursor == 2 and source.health == ArchiveSource.Health.ERROR
    assert "network" in source.status_message
    pending = ArchivedMessage.objects.get(msgid="msg2")
    assert pending.media_status == ArchivedMessage.MediaStatus.PENDING and not pending.media_path
    assert not list(Path(source_media_root()).rglob("*.partial"))

    # When the network is back and the source is pulled again
    serve(records, **options)
    second = archive_pull(source_id=source.pk)
    # Then the rest arrives once, the image is fetched, and nothing is lost or duplicated
    assert second.ok and (second.stored, second.duplicates, second.cursor) == (3, 0, 5)
    assert sorted(ArchivedMessage.objects.values_list("seq", flat=True)) == [1, 2, 3, 4, 5]
    fetched = ArchivedMessage.objects.get(msgid="msg2")
    assert fetched.media_status == ArchivedMessage.MediaStatus.STORED
    assert fetched.media_path.endswith(".pdf")
    assert fetched.media_sha256 == hashlib.sha256(content).hexdigest()
    source.refresh_from_db()
    assert source.health == ArchiveSource.Health.OK and source.last_success_at is not None
    assert ledger_verify().ok


def test_records_near_the_five_day_window_raise_a_warning(
    source: ArchiveSource, serve: Serve, caplog
) -> None:
    old = dt.timedelta(days=4, hours=12)
    serve([FixtureRecord(message(1, age=old), publickey_ver=1)])
    result = archive_pull(source_id=source.pk)
    assert result.ok and result.stored == 1
    source.refresh_from_db()
    assert source.health == ArchiveSource.Health.WARNING
    assert "企业微信 5 天后删除记录" in source.status_message
    assert any(r.levelname == "WARNING" and "5 天" in r.getMessage() for r in caplog.records)
    # And a source that has not pulled successfully for days is flagged by the gap check
    ArchiveSource.objects.filter(pk=source.pk).update(
        health=ArchiveSource.Health.OK, last_success_at=timezone.now() - old
    )
    assert archive_gap_check() == [source]
    source.refresh_from_db()
    assert source.health == ArchiveSource.Health.WARNING
    # And so is one that was set up days ago and never pulled successfully (a new one is not)
    ArchiveSource.objects.filter(pk=source.pk).update(
        health=ArchiveSource.Health.OK, last_success_at=None, created_at=timezone.now() - old
    )
    fresh = ArchiveSource.objects.create(name="新建", corp_id="ww3", secret="s")
    assert archive_gap_check() == [source]
    source.refresh_from_db()
    assert source.health == ArchiveSource.Health.WARNING
    assert "从未成功拉取" in source.status_message
    fresh.refresh_from_db()
    assert fresh.health == ArchiveSource.Health.NEVER


def test_due_sources_are_queued_on_the_archive_queue(
    source: ArchiveSource, django_capture_on_commit_callbacks
) -> None:
    from apps.audit import tasks
    from wecom_ai import queues

    ArchiveSource.objects.create(name="停用", corp_id="ww2", secret="s", enabled=False)
    with django_capture_on_commit_callbacks() as callbacks:
        assert tasks.archive_pull_due() == 1
    assert len(callbacks) == 1
    assert tasks.archive_pull.queue == queues.ARCHIVE


@pytest.mark.django_db(transaction=True)
def test_quarantine_retry_from_the_admin_runs_on_an_archive_worker(
    source: ArchiveSource, serve: Serve, keys, admin_client, start_worker, library: Path
) -> None:
    # Given two records sealed with key version 3, which the source did not have at pull time
    serve([FixtureRecord(message(n), publickey_ver=3 if n > 1 else 1) for n in (1, 2, 3)])
    archive_pull(source_id=source.pk)
    assert sorted(ArchiveQuarantine.objects.values_list("msgid", flat=True)) == ["msg2", "msg3"]
    ArchiveKey.objects.create(source=source, publickey_ver=3, private_key=pem(keys[3]))
    worker = start_worker(queues="archive", **sdk_env_for(library))
    # When an admin retries one of them from the quarantine list
    chosen = ArchiveQuarantine.objects.get(msgid="msg2")
    response = admin_client.post(
        reverse("admin:audit_archivequarantine_changelist"),
        {"action": "retry", "_selected_action": [chosen.pk]},
        follow=True,
    )
    # Then the page says the work is queued, and the archive worker opens that record only
    assert response.status_code == 200
    assert "1 条记录已排队" in response.content.decode()
    deadline = time.monotonic() + 60
    while not ArchivedMessage.objects.filter(msgid="msg2").exists():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
    assert ArchivedMessage.objects.get(msgid="msg2").text == "第2条消息"
    assert list(ArchiveQuarantine.objects.values_list("msgid", flat=True)) == ["msg3"]
    assert "archive_quarantine_retry" in worker.log()
    assert ledger_verify().ok

"""Ingestion: failures end as readable failed documents, versions flip atomically, the admin
uploads through the `ingest` queue and shows progress live."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import docx
import pytest
import redis
from asgiref.sync import async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import path, reverse

from apps.directory.selectors import Readers
from apps.knowledge.consumers import DocumentProgressConsumer, document_group
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.services.config import document_upload
from apps.knowledge.services.ingest import document_enqueue, document_progress_publish
from apps.knowledge.services.retrieval import knowledge_retrieve


@pytest.fixture(autouse=True)
def _media(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


def write_docx(path: Path, paragraphs: list[str]) -> Path:
    document = docx.Document()
    document.add_heading("请假制度", level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    document.save(str(path))
    return path


def kb_ingest(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("kb_ingest", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.django_db
def test_damaged_files_end_failed_with_a_readable_reason(tmp_path: Path, admin_client) -> None:
    # Given a folder with one good file and three the parser must refuse
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "good.md").write_text("# 考勤\n\n每天九点前打卡。", encoding="utf-8")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(2048))
    (folder / "fake.docx").write_bytes(os.urandom(512))
    (folder / "empty.txt").write_bytes(b"")
    err = io.StringIO()

    # When the command ingests the folder, it exits non-zero...
    with pytest.raises(CommandError, match="3 of 4 files failed"):
        call_command("kb_ingest", "hr", str(folder), stdout=io.StringIO(), stderr=err)

    # ...the good file is ready and each bad one failed with a stable code and a reason
    documents = {d.original_filename: d for d in Document.objects.all()}
    assert documents["good.md"].status == Document.Status.READY
    failures = {
        name: (d.status, d.error_code, d.error_message)
        for name, d in documents.items()
        if name != "good.md"
    }
    damaged = "it may be damaged."
    assert failures == {
        "broken.pdf": ("failed", "corrupt", f"The file could not be read as PDF; {damaged}"),
        "fake.docx": ("failed", "corrupt", f"The file is not a valid DOCX file; {damaged}"),
        "empty.txt": ("failed", "empty", "The file is empty."),
    }
    assert not Chunk.objects.exclude(document=documents["good.md"]).exists()
    assert "broken.pdf: failed (corrupt)" in err.getvalue()
    # and the admin's document list shows the reason
    page = admin_client.get(
        reverse("admin:knowledge_document_changelist"), HTTP_ACCEPT_LANGUAGE="en"
    ).content.decode()
    assert "The file is not a valid DOCX file" in page


@pytest.mark.django_db
def test_a_failed_new_version_keeps_the_previous_one_searchable(tmp_path: Path) -> None:
    # Given version 1 indexed
    policy = write_docx(tmp_path / "leave.docx", ["病假需要提供医院证明。"])
    kb_ingest("hr", str(policy))
    # When a damaged version 2 of the same file arrives
    policy.write_bytes(os.urandom(700))
    with pytest.raises(CommandError):
        kb_ingest("hr", str(policy))
    # Then the document reports the failure, and answers still come from version 1
    document = Document.objects.get()
    assert (document.status, document.error_code) == ("failed", "corrupt")
    assert (document.version, document.active_version) == (2, 1)
    kb = KnowledgeBase.objects.get()
    hits = knowledge_retrieve(
        bot_kb_ids=[kb.pk], readers=Readers.everything(), query="病假证明", top_k=3
    )
    assert [(hit.document_version, "医院证明" in hit.text) for hit in hits] == [(1, True)]


@pytest.mark.django_db(transaction=True)
def test_searches_see_exactly_one_version_while_a_new_one_is_ingested(
    tmp_path: Path, settings
) -> None:
    # One passage per embedding batch, so searches interleave with the chunk writes.
    settings.KNOWLEDGE_EMBEDDING_BATCH = 1
    sections = ["病假", "事假", "婚假", "丧假"]

    def version(label: str) -> str:
        return "\n\n".join(
            f"# {name}\n\n{name}规定（{label}）：请假需提前申请。" for name in sections
        )

    policy = tmp_path / "leave.md"
    policy.write_text(version("第一版"), encoding="utf-8")
    kb_ingest("hr", str(policy))
    kb = KnowledgeBase.objects.get()
    # (started, finished, versions seen) per search, on one monotonic clock
    results: list[tuple[float, float, tuple[int, ...]]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        try:
            while not stop.is_set():
                started = time.monotonic()
                hits = knowledge_retrieve(
                    bot_kb_ids=[kb.pk], readers=Readers.everything(), query="请假规定", top_k=20
                )
                versions = tuple(sorted(hit.document_version for hit in hits))
                results.append((started, time.monotonic(), versions))
                time.sleep(0.01)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: len(results) >= 3)
        # When version 2 is ingested while the searches run
        policy.write_text(version("第二版"), encoding="utf-8")
        output, _ = kb_ingest("hr", str(policy))
        assert "leave.md: ready · v2 · 4 passages" in output
        _wait_for(lambda: bool(_began_after_new_version(list(results))))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    # Then every search saw all passages of exactly one version: never both, never none,
    # and a search that began after one saw the new version never sees the old one.
    # (Threads append in any order, so only start and finish times order searches.)
    assert not errors, errors
    assert {versions for _, _, versions in results} == {(1, 1, 1, 1), (2, 2, 2, 2)}
    assert set(_began_after_new_version(results)) == {(2, 2, 2, 2)}
    assert set(Chunk.objects.values_list("document_version", flat=True)) == {2}


def _began_after_new_version(
    results: list[tuple[float, float, tuple[int, ...]]],
) -> list[tuple[int, ...]]:
    """Versions seen by searches that began after some search had returned version 2."""
    finishes = [finished for _, finished, versions in results if 2 in versions]
    if not finishes:
        return []
    return [versions for started, _, versions in results if started > min(finishes)]


def _wait_for(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.django_db
def test_admin_refuses_oversized_and_unsupported_uploads(admin_client, settings) -> None:
    settings.KNOWLEDGE_MAX_UPLOAD_BYTES = 100
    kb = KnowledgeBase.objects.create(name="HR", slug="hr")
    url = reverse("admin:knowledge_document_add")

    def add(name: str, content: bytes) -> str:
        response = admin_client.post(
            url,
            {"kb": kb.pk, "upload": SimpleUploadedFile(name, content), "title": ""},
            HTTP_ACCEPT_LANGUAGE="en",
        )
        assert response.status_code == 200  # the form again, with the error
        return response.content.decode()

    assert "The file is 101 bytes, over the 100 bytes upload limit." in add("big.md", b"x" * 101)
    assert "legacy.doc cannot be indexed: supported types are" in add("legacy.doc", b"old")
    assert not Document.objects.exists()


@pytest.mark.django_db
def test_admin_upload_and_reindex_go_to_the_ingest_queue(
    admin_client, django_capture_on_commit_callbacks
) -> None:
    # Given a knowledge base and a file uploaded in the admin
    kb = KnowledgeBase.objects.create(name="HR", slug="hr")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:knowledge_document_add"),
            {"kb": kb.pk, "upload": SimpleUploadedFile("考勤.md", "# 考勤\n\n九点打卡。".encode())},
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    # Then the document waits for a worker on the ingest queue, owned by the uploader
    document = Document.objects.get()
    assert (document.status, document.version, document.original_filename) == (
        "pending", 1, "考勤.md"
    )  # fmt: skip
    assert document.owner.username == "admin"
    assert broker.llen("ingest") == 1
    # and the list page follows its progress live
    page = admin_client.get(reverse("admin:knowledge_document_changelist")).content.decode()
    assert f'data-url="/ws/knowledge/documents/{document.pk}/" data-live="1"' in page
    assert "knowledge/document_live.js" in page
    # When an admin re-indexes it, another run is queued
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:knowledge_document_changelist"),
            {"action": "reindex", "_selected_action": [document.pk]},
        )
    assert broker.llen("ingest") == 2


# Consumers close the thread's database connection when a socket goes: no test transaction.
@pytest.mark.django_db(transaction=True)
def test_progress_reaches_staff_watching_the_document(admin_user, django_user_model) -> None:
    application = URLRouter(
        [path("ws/knowledge/documents/<int:document_id>/", DocumentProgressConsumer.as_asgi())]
    )
    clerk = django_user_model.objects.create_user("clerk", password="x", is_staff=True)

    async def watch(user) -> tuple[bool, dict | None]:
        # channels.testing needs daphne, which the project does not install; this is the
        # same conversation spelled in ASGI messages.
        path_ = "/ws/knowledge/documents/7/"
        scope = {"type": "websocket", "path": path_, "headers": [], "subprotocols": []}
        socket = ApplicationCommunicator(application, {**scope, "user": user})
        await socket.send_input({"type": "websocket.connect"})
        connected = (await socket.receive_output(10))["type"] == "websocket.accept"
        message = None
        if connected:
            update = Document(pk=7, status="processing", progress=40, version=2)
            await sync_to_async(document_progress_publish)(update, stage="embedding")
            message = json.loads((await socket.receive_output(10))["text"])
        await socket.send_input({"type": "websocket.disconnect", "code": 1000})
        await socket.wait(5)
        return connected, message

    connected, message = async_to_sync(watch)(admin_user)
    assert connected
    assert message is not None
    assert {key: message[key] for key in ("status", "progress", "stage", "version")} == {
        "status": "processing", "progress": 40, "stage": "embedding", "version": 2,
    }  # fmt: skip
    # A staff member without the view permission is turned away
    assert async_to_sync(watch)(clerk) == (False, None)


@pytest.mark.slow
def test_ingest_worker_indexes_the_upload_and_publishes_progress(
    start_worker, tmp_path: Path
) -> None:
    # Given an ingest worker sharing this test's media folder, and a pending upload
    worker = start_worker(queues="ingest", MEDIA_ROOT=settings.MEDIA_ROOT)
    kb = KnowledgeBase.objects.create(name="HR", slug="hr")
    result = document_upload(
        kb=kb,
        content=SimpleUploadedFile("overtime.md", "# 加班\n\n加班需要主管批准。".encode()),
        filename="overtime.md",
        actor=None,
        enqueue=False,
    )
    # When it is queued, while this test listens to the document's group
    try:
        updates = async_to_sync(_updates_until_finished)(
            document_group(result.document.pk),
            lambda: document_enqueue(document_id=result.document.pk),
        )
    except TimeoutError:
        pytest.fail(f"no finished update from the worker:\n{worker.log()[-3000:]}")
    # Then the worker indexed it and told the group how far it got
    assert updates[-1]["status"] == "ready", updates[-1]
    assert updates[-1]["progress"] == 100
    assert "embedding" in {update["stage"] for update in updates}
    document = Document.objects.get(pk=result.document.pk)
    assert (document.status, document.active_version, document.chunk_count) == ("ready", 1, 1)
    hits = knowledge_retrieve(
        bot_kb_ids=[kb.pk], readers=Readers.everything(), query="加班审批", top_k=1
    )
    assert hits and "主管批准" in hits[0].text


async def _updates_until_finished(group: str, start: Callable[[], None]) -> list[dict]:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    await sync_to_async(start)()
    updates: list[dict] = []
    async with asyncio.timeout(240):
        while not updates or updates[-1]["status"] not in ("ready", "failed"):
            updates.append(await layer.receive(channel))
    return updates

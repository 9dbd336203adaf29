"""The knowledge base page's workspace: uploads, progress, passages and the retrieval test.

Documents are indexed by the real pipeline (parser, chunker, the small embedding model)
called in-process; the views are driven through Django's test client as an anonymous
visitor, a staff user without knowledge permissions, a knowledge officer (documents but
not the search-all permission) and a superuser.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from apps.audit.models import AccessLog, OperatorAuditEntry
from apps.directory.services import directory_user_save
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.selectors import Readers
from apps.knowledge.services.config import document_upload, passage_enable_set
from apps.knowledge.services.ingest import document_ingest
from apps.knowledge.services.retrieval import knowledge_retrieve

pytestmark = pytest.mark.django_db

HANDBOOK = """# 员工手册

## 休假

员工每年可以享受带薪休假五天，入职满一年后开始计算。

## 报销

报销时需要在系统中提交发票原件和审批单。

## 办公设备

办公电脑出现故障时，请联系IT服务台更换。
"""

OFFICER_PERMS = (
    "view_knowledgebase",
    "change_knowledgebase",
    "view_document",
    "add_document",
    "change_document",
)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def kb() -> KnowledgeBase:
    return KnowledgeBase.objects.create(name="财务", slug="finance", allowed_departments=["财务部"])


@pytest.fixture
def indexed(kb, admin_user) -> Document:
    """The handbook, uploaded and indexed by the real pipeline."""
    result = document_upload(
        kb=kb,
        content=ContentFile(HANDBOOK.encode(), name="handbook.md"),
        filename="handbook.md",
        actor=admin_user,
        enqueue=False,
    )
    document = document_ingest(document_id=result.document.pk)
    assert document is not None and document.status == Document.Status.READY
    return document


def staff_client() -> Client:
    user = User.objects.create_user("staff", password="x", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


def officer_client() -> Client:
    user = User.objects.create_user("officer", password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="knowledge", codename__in=OFFICER_PERMS)
    )
    client = Client()
    client.force_login(user)
    return client


def urls(kb: KnowledgeBase) -> dict[str, str]:
    return {
        name: reverse(f"admin:knowledge_knowledgebase_{name}", args=[kb.pk])
        for name in ("change", "upload", "progress", "retrieval")
    }


def ingest_queue_length() -> int:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL).llen("ingest")


# --- the page -------------------------------------------------------------------------------


def test_the_page_lists_documents_and_offers_the_upload_and_the_retrieval_test(
    admin_client, kb, indexed
):
    page = admin_client.get(urls(kb)["change"], HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert 'id="kb-workspace"' in page
    assert "员工手册" in page  # the document's title, from its first heading
    assert f'data-id="{indexed.pk}"' in page
    assert f">{indexed.chunk_count}</a>" in page  # passages, linked to their page
    assert 'name="files" id="kb-files" multiple accept=".csv,.docx,' in page
    assert 'id="kb-retrieval"' in page
    assert "knowledge/kb_workspace.js" in page
    # the script refuses a file over the limit before sending it, with the server's words
    assert f'data-max-bytes="{settings.KNOWLEDGE_MAX_UPLOAD_BYTES}"' in page
    assert 'data-too-large="over the 50.0\xa0MB upload limit"' in page


def test_an_officer_sees_documents_and_uploads_but_no_retrieval_test(kb, indexed):
    page = officer_client().get(urls(kb)["change"]).content.decode()
    assert f'data-id="{indexed.pk}"' in page
    assert 'id="kb-upload"' in page
    assert 'id="kb-retrieval"' not in page
    assert reverse("admin:knowledge_document_passages", args=[indexed.pk]) not in page


def test_the_workspace_is_simplified_chinese_for_chinese_admins(admin_client, kb, indexed):
    page = admin_client.get(urls(kb)["change"], HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "检索测试" in page
    assert "将文件拖到这里" in page


# --- permissions of every endpoint ----------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(client, kb, indexed):
    passages = reverse("admin:knowledge_document_passages", args=[indexed.pk])
    for url in [urls(kb)["progress"], passages]:
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]
    for url in [urls(kb)["upload"], urls(kb)["retrieval"], passages]:
        response = client.post(url, {"question": "休假", "chunk": 1, "enabled": "0"})
        assert response.status_code == 302 and "/login/" in response["Location"]
    assert Document.objects.count() == 1 and not AccessLog.objects.exists()


def test_staff_without_knowledge_permissions_are_refused(kb, indexed):
    client = staff_client()
    chunk = indexed.chunks.first()
    passages = reverse("admin:knowledge_document_passages", args=[indexed.pk])
    assert client.get(urls(kb)["progress"]).status_code == 403
    assert client.get(passages).status_code == 403
    upload = SimpleUploadedFile("new.md", b"# new\n\ntext")
    assert client.post(urls(kb)["upload"], {"files": [upload]}).status_code == 403
    assert client.post(urls(kb)["retrieval"], {"question": "休假"}).status_code == 403
    assert client.post(passages, {"chunk": chunk.pk, "enabled": "0"}).status_code == 403
    assert Document.objects.count() == 1 and not AccessLog.objects.exists()
    chunk.refresh_from_db()
    assert chunk.enabled


def test_an_officer_may_follow_progress_but_not_search_all_or_read_passages(kb, indexed):
    client = officer_client()
    passages = reverse("admin:knowledge_document_passages", args=[indexed.pk])
    assert client.get(urls(kb)["progress"]).status_code == 200
    assert client.get(passages).status_code == 403
    response = client.post(urls(kb)["retrieval"], {"question": "休假", "reason": "test"})
    assert response.status_code == 403
    assert "权限" in response.json()["error"]
    assert not AccessLog.objects.exists()


def test_an_unknown_knowledge_base_is_not_found(admin_client, kb):
    url = reverse("admin:knowledge_knowledgebase_progress", args=[kb.pk + 1000])
    assert admin_client.get(url).status_code == 404


# --- uploads --------------------------------------------------------------------------------


def test_several_files_upload_at_once_and_a_bad_one_does_not_stop_the_others(
    admin_client, kb, settings, django_capture_on_commit_callbacks
):
    settings.KNOWLEDGE_MAX_UPLOAD_BYTES = 1000
    files = [
        SimpleUploadedFile("rules.md", "# 报销\n\n规则。".encode()),
        SimpleUploadedFile("setup.exe", b"MZ\x90\x00"),
        SimpleUploadedFile("big.txt", b"x" * 1001),
        SimpleUploadedFile("notes.txt", "食堂八点开门。".encode()),
    ]
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            urls(kb)["upload"],
            {"files": files},
            HTTP_ACCEPT="application/json",
            HTTP_ACCEPT_LANGUAGE="en",
        )
    assert response.status_code == 200
    results = {item["name"]: item for item in response.json()["files"]}
    assert [results[name]["ok"] for name in ("rules.md", "setup.exe", "big.txt", "notes.txt")] == [
        True,
        False,
        False,
        True,
    ]
    assert "supported types are .csv" in results["setup.exe"]["message"]
    assert "over the 1000\xa0bytes upload limit" in results["big.txt"]["message"]
    assert sorted(row["name"] for row in response.json()["documents"]) == ["notes.txt", "rules.md"]
    assert set(Document.objects.values_list("original_filename", flat=True)) == {
        "rules.md",
        "notes.txt",
    }
    assert ingest_queue_length() == 2
    # each stored file is an operator change by the admin, owned by them
    entries = OperatorAuditEntry.objects.filter(action="knowledge.document.create")
    assert sorted(entries.values_list("object_repr", flat=True)) == ["notes.txt", "rules.md"]
    assert {entry.actor_username for entry in entries} == {"admin"}
    assert set(Document.objects.values_list("owner__username", flat=True)) == {"admin"}


def test_without_javascript_the_picker_posts_and_the_page_reports_each_file(
    admin_client, kb, indexed
):
    files = [
        SimpleUploadedFile("handbook.md", HANDBOOK.encode()),
        SimpleUploadedFile("photo.png", b"\x89PNG"),
    ]
    response = admin_client.post(
        urls(kb)["upload"], {"files": files}, HTTP_ACCEPT_LANGUAGE="en", follow=True
    )
    assert response.redirect_chain[-1][0].endswith(urls(kb)["change"] + "#kb-workspace")
    texts = [str(message) for message in response.context["messages"]]
    assert texts[0] == "handbook.md is identical to the current version; nothing to index."
    assert texts[1].startswith("photo.png cannot be indexed")
    assert Document.objects.count() == 1


def test_a_same_named_file_becomes_the_next_version(admin_client, kb, indexed):
    changed = SimpleUploadedFile("handbook.md", (HANDBOOK + "\n## 新\n\n新增。").encode())
    response = admin_client.post(
        urls(kb)["upload"],
        {"files": [changed]},
        HTTP_ACCEPT="application/json",
        HTTP_ACCEPT_LANGUAGE="en",
    )
    assert response.json()["files"][0]["message"] == "handbook.md uploaded as version 2."
    indexed.refresh_from_db()
    assert (indexed.version, indexed.active_version, indexed.status) == (2, 1, "pending")


def test_an_upload_without_files_is_refused(admin_client, kb):
    response = admin_client.post(
        urls(kb)["upload"], {}, HTTP_ACCEPT="application/json", HTTP_ACCEPT_LANGUAGE="en"
    )
    assert response.status_code == 400
    assert response.json()["error"] == "Choose at least one file to upload."
    response = admin_client.post(urls(kb)["upload"], {}, HTTP_ACCEPT_LANGUAGE="en", follow=True)
    assert [str(m) for m in response.context["messages"]] == ["Choose at least one file to upload."]
    assert not Document.objects.exists()


def test_an_officer_uploads(kb, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = officer_client().post(
            urls(kb)["upload"],
            {"files": [SimpleUploadedFile("a.md", b"# a\n\ntext")]},
            HTTP_ACCEPT="application/json",
        )
    assert response.status_code == 200 and response.json()["files"][0]["ok"]
    assert Document.objects.get().owner.username == "officer"


# --- progress -------------------------------------------------------------------------------


def test_ingestion_records_each_stage_and_the_embedding_count(admin_user, kb, settings):
    settings.KNOWLEDGE_EMBEDDING_BATCH = 2
    settings.KNOWLEDGE_PROGRESS_INTERVAL_SECONDS = 0
    result = document_upload(
        kb=kb,
        content=ContentFile(HANDBOOK.encode(), name="handbook.md"),
        filename="handbook.md",
        actor=admin_user,
        enqueue=False,
    )
    seen: list[tuple[str, int, int]] = []

    def on_progress(document: Document, stage: str) -> None:
        row = Document.objects.get(pk=document.pk)
        seen.append((row.stage, row.stage_done, row.stage_total))

    document = document_ingest(document_id=result.document.pk, on_progress=on_progress)
    assert document is not None and document.status == Document.Status.READY
    total = document.chunk_count
    assert total >= 3
    assert seen[0] == ("parsing", 0, 0)
    assert seen[1] == ("chunking", 0, 0)
    assert seen[2] == ("embedding", 0, total)
    assert seen[3] == ("embedding", 2, total)
    assert seen[-1] == ("", 0, 0)  # the flip clears the stage
    assert (document.stage, document.stage_done, document.stage_total) == ("", 0, 0)


def test_progress_answers_the_stage_while_indexing_and_the_row_when_done(admin_client, kb, indexed):
    Document.objects.filter(pk=indexed.pk).update(
        status=Document.Status.PROCESSING,
        progress=40,
        stage=Document.Stage.EMBEDDING,
        stage_done=3,
        stage_total=10,
    )
    data = admin_client.get(urls(kb)["progress"], HTTP_ACCEPT_LANGUAGE="en").json()
    assert data["live"] is True
    [row] = data["documents"]
    assert (row["id"], row["status"], row["progress"]) == (indexed.pk, "processing", 40)
    assert row["stage_text"] == "embedding 3 of 10"
    data = admin_client.get(urls(kb)["progress"], HTTP_ACCEPT_LANGUAGE="zh-hans").json()
    assert data["documents"][0]["stage_text"] == "正在嵌入 3 / 10"
    Document.objects.filter(pk=indexed.pk).update(status=Document.Status.READY, stage="")
    data = admin_client.get(urls(kb)["progress"], HTTP_ACCEPT_LANGUAGE="en").json()
    assert data["live"] is False
    assert data["documents"][0]["stage_text"] == ""
    assert data["documents"][0]["passages"] == indexed.chunk_count


# --- passages -------------------------------------------------------------------------------


def test_passages_show_their_text_and_can_be_disabled_and_enabled_again(admin_client, indexed):
    url = reverse("admin:knowledge_document_passages", args=[indexed.pk])
    page = admin_client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    chunk = indexed.chunks.order_by("position").first()
    assert chunk.text.split("\n")[0] in page
    assert page.count('class="kb-passage-toggle" value="Disable"') == indexed.chunk_count
    response = admin_client.post(url, {"chunk": chunk.pk, "enabled": "0", "page": 1})
    assert response.status_code == 302
    chunk.refresh_from_db()
    assert not chunk.enabled
    entry = OperatorAuditEntry.objects.get(action="knowledge.passage.disable")
    assert (entry.object_id, entry.before, entry.after) == (
        str(chunk.pk),
        {"enabled": True},
        {"enabled": False},
    )
    page = admin_client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert 'class="kb-passage-toggle" value="Enable"' in page
    admin_client.post(url, {"chunk": chunk.pk, "enabled": "1"})
    chunk.refresh_from_db()
    assert chunk.enabled
    assert OperatorAuditEntry.objects.filter(action="knowledge.passage.enable").count() == 1


def test_switching_a_passage_to_what_it_is_writes_nothing(admin_user, indexed):
    chunk = indexed.chunks.first()
    assert passage_enable_set(chunk=chunk, enabled=True, actor=admin_user) is False
    assert not OperatorAuditEntry.objects.filter(action__startswith="knowledge.passage").exists()


def test_a_passage_of_another_document_is_not_switched_here(admin_client, kb, indexed):
    other = document_upload(
        kb=kb,
        content=ContentFile(b"# other\n\nanother text", name="other.md"),
        filename="other.md",
        actor=None,
        enqueue=False,
    ).document
    document_ingest(document_id=other.pk)
    foreign = Chunk.objects.filter(document=other).first()
    url = reverse("admin:knowledge_document_passages", args=[indexed.pk])
    assert admin_client.post(url, {"chunk": foreign.pk, "enabled": "0"}).status_code == 404
    foreign.refresh_from_db()
    assert foreign.enabled


def test_a_disabled_passage_is_not_found_and_enabling_brings_it_back(admin_user, kb, indexed):
    reimbursement = indexed.chunks.get(text__contains="发票原件")

    def found() -> tuple[list[int], dict[int, tuple[str, ...]]]:
        hits = knowledge_retrieve(
            bot_kb_ids=[kb.pk], readers=Readers.everything(), query="发票原件 审批单", top_k=50
        )
        return [hit.chunk_id for hit in hits], {hit.chunk_id: hit.methods for hit in hits}

    ids, methods = found()
    assert reimbursement.pk in ids
    assert methods[reimbursement.pk] == ("dense", "lexical")  # the word and the vector
    passage_enable_set(chunk=reimbursement, enabled=False, actor=admin_user)
    ids, _ = found()
    # top_k 50 > the handbook's passages: only the filter can leave it out, in both lists
    assert reimbursement.pk not in ids
    assert len(ids) == indexed.chunk_count - 1
    passage_enable_set(chunk=reimbursement, enabled=True, actor=admin_user)
    ids, _ = found()
    assert reimbursement.pk in ids


# --- the retrieval test ---------------------------------------------------------------------


def test_retrieval_as_all_audiences_needs_a_reason_and_is_access_logged(admin_client, kb, indexed):
    url = urls(kb)["retrieval"]
    response = admin_client.post(url, {"question": "发票原件"}, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert response.json()["errors"]["reason"] == [
        "Give a reason: this search is recorded in the access log."
    ]
    assert not AccessLog.objects.exists()
    response = admin_client.post(
        url, {"question": "发票原件", "reason": "检查检索"}, HTTP_ACCEPT_LANGUAGE="en"
    )
    assert response.status_code == 200
    hits = response.json()["hits"]
    assert "发票原件" in hits[0]["text"]
    assert hits[0]["score"] > 0
    assert hits[0]["methods"] == ["dense", "lexical"]
    assert hits[0]["method"] == "both"
    logged = AccessLog.objects.filter(username="admin")
    assert logged.filter(object_type="knowledge.knowledgebase", object_id=str(kb.pk)).exists()
    assert logged.filter(object_type="knowledge.chunk").count() == len(hits)
    assert "knowledge search as all audiences: 发票原件" in logged.first().reason


def test_retrieval_as_a_directory_user_applies_their_audience(admin_client, kb, indexed):
    directory_user_save(userid="zhangsan", departments=["财务部"])
    directory_user_save(userid="lisi", departments=["销售部"])
    url = urls(kb)["retrieval"]
    payload = {"question": "发票原件", "reason": "检查权限"}
    inside = admin_client.post(url, {**payload, "userid": "zhangsan"}).json()
    outside = admin_client.post(url, {**payload, "userid": "lisi"}).json()
    assert inside["userid"] == "zhangsan" and inside["hits"]
    assert outside["userid"] == "lisi" and outside["hits"] == []
    assert AccessLog.objects.filter(reason__contains="as employee lisi").exists()


def test_retrieval_refuses_bad_input(admin_client, kb, indexed):
    url = urls(kb)["retrieval"]
    response = admin_client.post(url, {"question": "  ", "reason": "x"}, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 400
    assert "question" in response.json()["errors"]
    response = admin_client.post(
        url, {"question": "休假", "reason": "x", "userid": "nobody"}, HTTP_ACCEPT_LANGUAGE="en"
    )
    assert response.status_code == 400
    assert response.json()["errors"]["userid"] == ["No directory user has this userid."]
    assert admin_client.get(url).status_code == 405
    assert not AccessLog.objects.exists()


def test_hits_serialise_for_the_page(admin_client, kb, indexed):
    response = admin_client.post(
        urls(kb)["retrieval"], {"question": "电脑故障", "reason": "x", "top_k": 2}
    )
    hits = json.loads(response.content)["hits"]
    assert len(hits) == 2
    assert hits[0]["url"] == reverse("admin:knowledge_document_passages", args=[indexed.pk])
    assert {"chunk_id", "title", "heading", "text", "score", "method"} <= set(hits[0])

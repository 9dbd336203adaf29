"""The knowledge admin: documents show their indexing state, edits go through the services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse

from apps.audit.models import OperatorAuditEntry
from apps.inference.embedders import USE_MODEL_KEY
from apps.knowledge.models import Document, KnowledgeBase
from apps.knowledge.services.embedding import embedding_index_ensure, embedding_index_name

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def finance_kb() -> KnowledgeBase:
    return KnowledgeBase.objects.create(name="财务", slug="finance", allowed_departments=["财务部"])


def make_document(kb: KnowledgeBase, name: str, **fields: object) -> Document:
    document = Document(kb=kb, original_filename=name, **fields)
    document.file.save(name, ContentFile(b"# t\n\ntext"), save=False)
    document.save()
    return document


def form_data(document: Document, **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "title": document.title,
        "owner": "",
        "expires_on": "",
        "allowed_departments": "",
        "allowed_userids": "",
        "allowed_tags": "",
    }
    data.update(overrides)
    return data


def test_change_page_shows_the_failure_and_the_inherited_audience(admin_client, finance_kb):
    document = make_document(
        finance_kb,
        "scan.pdf",
        status=Document.Status.FAILED,
        error_code="empty",
        error_message="The document contains no extractable text.",
    )
    page = admin_client.get(
        reverse("admin:knowledge_document_change", args=[document.pk]), HTTP_ACCEPT_LANGUAGE="en"
    ).content.decode()
    assert "The document contains no extractable text." in page
    assert "财务部 (from the knowledge base)" in page
    assert 'data-live="0"' in page


def test_a_new_file_on_the_change_page_is_the_next_version(
    admin_client, finance_kb, django_capture_on_commit_callbacks
):
    # Given version 1 is live
    document = make_document(
        finance_kb, "rules.md", status="ready", active_version=1, active_generation=1, generation=1
    )
    old_file = document.file.name
    # When an admin uploads a changed file and a new title
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:knowledge_document_change", args=[document.pk]),
            form_data(
                document,
                title="报销规则",
                upload=SimpleUploadedFile("rules.md", "# 报销\n\n新规则。".encode()),
            ),
        )
    assert response.status_code == 302, response.content.decode()[:2000]
    # Then version 2 waits for indexing while version 1 stays the searchable one
    document.refresh_from_db()
    assert (document.version, document.active_version, document.status) == (2, 1, "pending")
    assert (document.title, document.generation, document.active_generation) == ("报销规则", 1, 1)
    assert not Path(settings.MEDIA_ROOT, old_file).exists()
    assert redis.Redis.from_url(settings.CELERY_BROKER_URL).llen("ingest") == 1


def test_changing_how_a_knowledge_base_is_indexed_reindexes_its_documents(
    admin_client, finance_kb, django_capture_on_commit_callbacks
):
    for name in ("a.md", "b.md"):
        make_document(finance_kb, name, status="ready")
    data = {
        "name": finance_kb.name,
        "slug": finance_kb.slug,
        "description": "",
        "embedding_profile": "",
        "chunk_size": 300,
        "chunk_overlap": 60,
        "allowed_departments": "财务部",
        "allowed_userids": "",
        "allowed_tags": "",
        "answer_only_from_sources": "unknown",
    }
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:knowledge_knowledgebase_change", args=[finance_kb.pk]), data
        )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert set(Document.objects.values_list("status", flat=True)) == {"pending"}
    assert redis.Redis.from_url(settings.CELERY_BROKER_URL).llen("ingest") == 2
    # an overlap as large as the chunk size is refused
    data["chunk_overlap"] = 300
    response = admin_client.post(
        reverse("admin:knowledge_knowledgebase_change", args=[finance_kb.pk]),
        data,
        HTTP_ACCEPT_LANGUAGE="en",
    )
    assert "The overlap must be smaller than the chunk size." in response.content.decode()


def test_another_embedding_dimension_gets_its_own_hnsw_index() -> None:
    assert embedding_index_ensure(dimensions=1024)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s", [embedding_index_name(1024)]
        )
        [(definition,)] = cursor.fetchall()
    assert "USING hnsw (((embedding)::vector(1024)) vector_cosine_ops)" in definition
    assert "WHERE (embedding_dimensions = 1024)" in definition
    assert not embedding_index_ensure(dimensions=4096)  # too wide for HNSW: exact scans


def test_a_new_embedder_re_embeds_in_the_background_instead_of_re_indexing(
    admin_client, finance_kb, model_profile, django_capture_on_commit_callbacks
):
    # Given a knowledge base on the bundled encoder with an indexed document
    make_document(finance_kb, "a.md", status="ready")
    data = {
        "name": finance_kb.name,
        "slug": finance_kb.slug,
        "description": "",
        "embedder": KnowledgeBase.Embedders.GGUF,
        "embedding_profile": model_profile.pk,
        "chunk_size": finance_kb.chunk_size,
        "chunk_overlap": finance_kb.chunk_overlap,
        "allowed_departments": "财务部",
        "allowed_userids": "",
        "allowed_tags": "",
        "answer_only_from_sources": "unknown",
    }
    # When the admin switches it to a GGUF embedding model
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:knowledge_knowledgebase_change", args=[finance_kb.pk]), data
        )
    assert response.status_code == 302, response.content.decode()[:3000]
    # Then the documents stay answerable, the bundled vectors are pinned until the swap,
    # and one re-embed run (not a re-index per document) is queued
    finance_kb.refresh_from_db()
    assert (finance_kb.embedder, finance_kb.embedding_profile) == ("gguf", model_profile)
    assert finance_kb.embedding_model == USE_MODEL_KEY
    assert set(Document.objects.values_list("status", flat=True)) == {"ready"}
    queued = redis.Redis.from_url(settings.CELERY_BROKER_URL).lrange("ingest", 0, -1)
    assert [json.loads(m)["headers"]["task"] for m in queued] == [
        "apps.knowledge.tasks.knowledge_base_reembed"
    ]
    entry = OperatorAuditEntry.objects.get(action="knowledge.knowledgebase.update")
    assert entry.after["embedder"] == "gguf"

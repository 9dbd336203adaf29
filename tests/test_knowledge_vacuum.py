"""After large deletions the passage table is vacuumed, so the filtered vector search does
not give up among deleted passages that the HNSW graph still holds."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from apps.knowledge import tasks
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.selectors import Readers
from apps.knowledge.services import config, maintenance, retrieval
from apps.knowledge.services.embedding import (
    embedder_spec_for,
    embedding_index_ensure,
    get_embedder,
)

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "差旅住宿标准"
DOOMED = 3000  # nearest to the question, deleted
KEPT = 8


def _document(kb: KnowledgeBase, name: str) -> Document:
    return Document.objects.create(
        kb=kb, file=name, original_filename=name, title=name, generation=1,
        active_generation=1, active_version=1, status=Document.Status.READY,
    )  # fmt: skip


def _chunks(document: Document, vectors: np.ndarray, model_key: str) -> None:
    # No word of the question in the text: only the vector search can find these.
    Chunk.objects.bulk_create(
        [_chunk(document, position, vector, model_key) for position, vector in enumerate(vectors)],
        batch_size=500,
    )


def _chunk(document: Document, position: int, vector: np.ndarray, model_key: str) -> Chunk:
    return Chunk(
        document=document, document_version=1, generation=1, position=position,
        text=f"passage {position}", search_text=f"passage {position}", token_count=3,
        embedding=vector.tolist(), embedding_dimensions=len(vector), embedding_model=model_key,
    )  # fmt: skip


def _near(center: np.ndarray, count: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    vectors = center + spread * rng.standard_normal((count, len(center))) / np.sqrt(len(center))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def no_autovacuum(owner_sql):
    # Autovacuum could clean up first and hide what the test checks.
    owner_sql("ALTER TABLE knowledge_chunk SET (autovacuum_enabled = false)")
    yield
    owner_sql("ALTER TABLE knowledge_chunk RESET (autovacuum_enabled)")


@pytest.fixture
def large_table_plan():
    # What a large table gets: the planner walks the HNSW index (a few thousand rows it
    # would sort exactly), whose scan stops after 20,000 entries by default.
    with connection.cursor() as cursor:
        cursor.execute("SET enable_sort = off")
        cursor.execute("SET hnsw.max_scan_tuples = 1000")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET enable_sort")
        cursor.execute("RESET hnsw.max_scan_tuples")


def test_a_filtered_search_after_a_large_deletion_still_returns_its_hits(
    settings, monkeypatch, no_autovacuum, large_table_plan, admin_user
) -> None:
    settings.KNOWLEDGE_VACUUM_AFTER_DELETED = 1000
    kb = KnowledgeBase.objects.create(name="Travel", slug="travel")
    embedder = get_embedder(embedder_spec_for(kb))
    embedding_index_ensure(dimensions=embedder.dimensions)
    center = np.asarray(embedder.embed([retrieval._dense_query(QUESTION)])[0], dtype=float)
    rng = np.random.default_rng(7)
    old = _document(kb, "old-travel.md")
    _chunks(old, _near(center, DOOMED, 0.3, rng), embedder.model_key)
    kept = _document(kb, "travel.md")
    _chunks(kept, _near(center, KEPT, 1.5, rng), embedder.model_key)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE knowledge_chunk")  # the index as a settled table has it
    queued = []
    monkeypatch.setattr(tasks.chunks_vacuum, "delay", lambda: queued.append(True))

    def search() -> list[retrieval.Hit]:
        return retrieval.knowledge_retrieve(
            bot_kb_ids=[kb.pk], readers=Readers.everything(), query=QUESTION, top_k=5
        )

    assert {hit.document for hit in search()} == {"old-travel.md"}
    config.document_delete(document=old, actor=admin_user)

    # Without a vacuum the scan spends its budget on the deleted passages.
    assert len(search()) < 5
    assert queued == [True]  # the deletion queued the vacuum when it committed
    tasks.chunks_vacuum.apply()  # what the ingest worker runs
    hits = search()
    assert len(hits) == 5 and {hit.document for hit in hits} == {"travel.md"}


def test_small_deletions_add_up_to_one_vacuum(settings, monkeypatch) -> None:
    settings.KNOWLEDGE_VACUUM_AFTER_DELETED = 100
    queued = []
    monkeypatch.setattr(maintenance, "chunks_vacuum_enqueue", lambda: queued.append(True))
    maintenance.chunks_deleted_note(count=100)  # whatever an earlier test left, start over
    queued.clear()

    assert not maintenance.chunks_deleted_note(count=60)
    assert maintenance.chunks_deleted_note(count=40)
    assert not maintenance.chunks_deleted_note(count=99)
    assert queued == [True]  # outside a transaction: queued at once
    settings.KNOWLEDGE_VACUUM_AFTER_DELETED = 0
    assert not maintenance.chunks_deleted_note(count=10_000)


def test_the_app_role_may_vacuum_the_passage_table(settings) -> None:
    # Tests connect as the app role, like web and workers; the grant comes with migrate.
    assert connection.settings_dict["USER"] == settings.DATABASE_APP_ROLE
    assert maintenance.chunks_vacuum()


def test_a_cache_outage_never_fails_the_deletion(settings, monkeypatch) -> None:
    def down(*args, **kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr(maintenance.cache, "add", down)
    assert not maintenance.chunks_deleted_note(count=settings.KNOWLEDGE_VACUUM_AFTER_DELETED)

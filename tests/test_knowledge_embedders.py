"""Embedders per knowledge base: the bundled multilingual default, the upgrade path for
existing knowledge bases, and a change of embedder that re-embeds in the background while
the old vectors keep answering until the swap."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from apps.inference.embedders import USE_DIMENSIONS, USE_MODEL_KEY, UseSpec, get_embedder
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.selectors import Readers
from apps.knowledge.services import reembed
from apps.knowledge.services.embedding import embedder_spec_for, embedding_spec_for
from apps.knowledge.services.retrieval import _fuse, knowledge_retrieve
from tests.conftest import as_database_owner

LEAVE = (
    "# 假期制度\n\n## 年假\n\n员工入职满一年后享有5天带薪年假，需在OA系统提前三个工作日申请。\n\n"
    "## 病假\n\n员工因病无法上班，应当天上午10点前通知主管，返岗后补交病假证明。\n"
)
CANTEEN = "# 行政服务\n\n## 员工食堂\n\n员工食堂位于B座二楼，午餐供应时间为11:30至13:30。\n"


@pytest.fixture(autouse=True)
def _media(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


def _ingest(tmp_path: Path, slug: str, **files: str) -> None:
    folder = tmp_path / slug
    folder.mkdir()
    for name, text in files.items():
        (folder / f"{name}.md").write_text(text, encoding="utf-8")
    call_command("kb_ingest", slug, str(folder), stdout=io.StringIO(), stderr=io.StringIO())


def _search(kb: KnowledgeBase, query: str) -> list:
    return knowledge_retrieve(
        bot_kb_ids=[kb.pk], readers=Readers.everything(), query=query, top_k=3
    )


def test_bundled_encoder_is_multilingual_batched_and_cached_per_process() -> None:
    embedder = get_embedder(UseSpec())
    assert embedder is get_embedder(UseSpec())
    vectors = embedder.embed(["年假有几天", "How many days of annual leave?", "食堂几点开饭"])
    assert len(vectors) == 3 and all(len(v) == USE_DIMENSIONS for v in vectors)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert abs(cosine(vectors[0], vectors[0]) - 1) < 1e-4
    # The English question sits nearer its Chinese paraphrase than an unrelated question.
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[2], vectors[1]) + 0.1
    assert embedder.count_tokens("年假 annual leave") > 0


@pytest.mark.django_db
def test_a_new_knowledge_base_uses_the_bundled_encoder_and_answers_across_languages(
    tmp_path: Path,
) -> None:
    _ingest(tmp_path, "hr", leave=LEAVE, canteen=CANTEEN)
    kb = KnowledgeBase.objects.get(slug="hr")

    assert kb.embedder == KnowledgeBase.Embedders.BUNDLED
    assert kb.embedding_dimensions == USE_DIMENSIONS and kb.embedding_model == ""
    assert set(Chunk.objects.values_list("embedding_model", "embedding_dimensions")) == {
        (USE_MODEL_KEY, USE_DIMENSIONS)
    }
    hits = _search(kb, "Where is the staff canteen and when is lunch?")
    assert hits[0].document == "canteen.md"
    hits = _search(kb, "How many days of paid annual leave do I get?")
    assert hits[0].heading_path[-1] == "年假"


@pytest.mark.slow  # loads the GGUF model and embeds with two models (several seconds)
@pytest.mark.django_db
def test_changing_the_embedder_reembeds_while_the_old_vectors_keep_answering(
    tmp_path: Path, model_profile, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    # Given a knowledge base on a GGUF model, indexed
    kb = KnowledgeBase.objects.create(
        name="HR", slug="hr", embedder=KnowledgeBase.Embedders.GGUF, embedding_profile=model_profile
    )
    _ingest(tmp_path, "hr", leave=LEAVE)
    old_key = embedding_spec_for(model_profile).model_key
    old_ids = set(Chunk.objects.values_list("id", flat=True))
    assert set(Chunk.objects.values_list("embedding_model", flat=True)) == {old_key}
    queued: list[int] = []
    monkeypatch.setattr(
        reembed, "knowledge_base_reembed_enqueue", lambda *, kb_id: queued.append(kb_id)
    )

    # When the admin switches it to the bundled encoder
    with django_capture_on_commit_callbacks(execute=True):
        assert reembed.knowledge_base_embedder_change(
            kb=kb, embedder=KnowledgeBase.Embedders.BUNDLED
        )

    # ...a re-embed is queued and, until it swaps, the old model's vectors are pinned
    assert queued == [kb.pk]
    kb.refresh_from_db()
    assert kb.embedding_model == old_key
    assert {hit.chunk_id for hit in _search(kb, "年假怎么申请")} <= old_ids

    seen_during: list[set[int]] = []
    real_swap = reembed._swap

    def swap_after_a_search(*args, **kwargs):
        # the copies exist now, the swap has not happened: searches still read the old ones
        assert Chunk.objects.filter(embedding_model=USE_MODEL_KEY).exists()
        seen_during.append({hit.chunk_id for hit in _search(kb, "年假怎么申请")})
        return real_swap(*args, **kwargs)

    monkeypatch.setattr(reembed, "_swap", swap_after_a_search)
    assert reembed.knowledge_base_reembed(kb_id=kb.pk)

    # Then searches answered from the old vectors during the run, and from the new after it
    assert seen_during and seen_during[0] and seen_during[0] <= old_ids
    kb.refresh_from_db()
    assert (kb.embedding_model, kb.embedding_dimensions) == ("", USE_DIMENSIONS)
    assert set(Chunk.objects.values_list("embedding_model", flat=True)) == {USE_MODEL_KEY}
    after = _search(kb, "How do I apply for annual leave?")
    assert after and {hit.chunk_id for hit in after}.isdisjoint(old_ids)
    assert after[0].heading_path[-1] == "年假"
    document = Document.objects.get()
    assert Chunk.objects.filter(document=document).count() == document.chunk_count
    assert set(Chunk.objects.values_list("generation", flat=True)) == {document.active_generation}


@pytest.mark.django_db
def test_choosing_the_embedder_it_already_serves_queues_nothing(monkeypatch) -> None:
    kb = KnowledgeBase.objects.create(name="HR", slug="hr")
    queued: list[int] = []
    monkeypatch.setattr(
        reembed, "knowledge_base_reembed_enqueue", lambda *, kb_id: queued.append(kb_id)
    )
    assert not reembed.knowledge_base_embedder_change(
        kb=kb, embedder=KnowledgeBase.Embedders.BUNDLED
    )
    assert queued == [] and kb.embedding_model == ""
    assert not reembed.knowledge_base_reembed(kb_id=kb.pk)


def test_score_fusion_lets_a_far_ahead_dense_hit_outrank_lexical_noise(settings) -> None:
    def row(chunk_id: int, method: str, closeness: float) -> dict:
        return {
            "id": chunk_id, "document_id": 1, "document__original_filename": "a.md",
            "document__title": "", "document__kb__slug": "kb", "heading_path": [],
            "text": str(chunk_id), "document_version": 1, "page": None,
            "closeness": closeness, "method": method,
        }  # fmt: skip

    rows = [
        row(1, "dense0", 0.2), row(2, "dense0", 0.7), row(3, "dense0", 0.75),
        row(2, "lexical", -0.9), row(3, "lexical", -0.8), row(1, "lexical", -0.01),
    ]  # fmt: skip
    # Equal-weight RRF lets two lexical votes carry passage 2 past the clear dense winner
    rrf = _fuse(rows, top_k=3, method="rrf", lexical_weight=1.0)
    assert [hit.chunk_id for hit in rrf] == [2, 1, 3]
    settings.KNOWLEDGE_FUSION, settings.KNOWLEDGE_FUSION_LEXICAL_WEIGHT = "score", 0.1
    assert [hit.chunk_id for hit in _fuse(rows, top_k=3)] == [1, 2, 3]


@pytest.mark.slow  # migrates the knowledge app back and forth
@pytest.mark.django_db(transaction=True)
def test_existing_knowledge_bases_keep_their_gguf_model_through_the_upgrade(
    model_profile,
) -> None:
    before = [("knowledge", "0006_move_directory_to_directory_app")]
    after = [("knowledge", "0007_knowledge_base_embedder")]
    with as_database_owner():
        executor = MigrationExecutor(connection)
        executor.migrate(before)
    try:
        _rows_before_the_upgrade_then_migrate(before, after, model_profile)
    finally:
        # Later migrations too, so the tests after this one find the current schema.
        with as_database_owner():
            executor = MigrationExecutor(connection)
            executor.migrate(executor.loader.graph.leaf_nodes())

    kb = KnowledgeBase.objects.get(slug="old")
    assert kb.embedder == KnowledgeBase.Embedders.GGUF
    assert kb.embedding_profile_id == model_profile.pk
    assert (kb.embedding_model, kb.embedding_dimensions) == ("", 576)
    assert embedder_spec_for(kb) == embedding_spec_for(model_profile)
    assert KnowledgeBase.objects.create(name="New", slug="new").embedder == "use-multilingual-v3"
    assert os.path.basename(embedder_spec_for(kb).model_key).endswith("#mean-centred-v1")


def test_the_reembed_runs_on_the_ingest_queue_with_the_ingest_time_limits() -> None:
    from django.conf import settings

    from apps.knowledge.tasks import document_ingest, knowledge_base_reembed
    from wecom_ai import queues

    assert knowledge_base_reembed.queue == queues.INGEST
    assert knowledge_base_reembed.soft_time_limit == settings.KNOWLEDGE_INGEST_TIME_LIMIT_SECONDS
    assert knowledge_base_reembed.time_limit == document_ingest.time_limit


def _rows_before_the_upgrade_then_migrate(before: list, after: list, model_profile) -> None:
    with as_database_owner():
        old = MigrationExecutor(connection).loader.project_state(before).apps
        OldKB = old.get_model("knowledge", "KnowledgeBase")
        OldDocument = old.get_model("knowledge", "Document")
        OldChunk = old.get_model("knowledge", "Chunk")
        kb = OldKB.objects.create(name="Old", slug="old", embedding_profile_id=model_profile.pk)
        document = OldDocument.objects.create(
            kb=kb, file="x.md", original_filename="x.md", generation=1, active_generation=1
        )
        OldChunk.objects.create(
            document=document, document_version=1, generation=1, position=0, text="年假",
            search_text="年假", token_count=1, embedding=[0.1] * 576,
            embedding_dimensions=576, embedding_model="old#mean-centred-v1",
        )  # fmt: skip
        MigrationExecutor(connection).migrate(after)

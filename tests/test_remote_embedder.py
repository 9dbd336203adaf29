"""Knowledge-base embeddings from a remote profile's server (`POST /v1/embeddings`), against
a real OpenAI-compatible server: `llama_cpp.server` in embedding mode with the bundled model."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from apps.inference.embedders import EmbeddingError, RemoteEmbeddingSpec, get_embedder
from apps.inference.embedders import remote as remote_embedders
from apps.inference.models import ModelProfile
from apps.knowledge.models import Chunk, KnowledgeBase
from apps.knowledge.selectors import Readers
from apps.knowledge.services.embedding import embedding_spec_for
from apps.knowledge.services.retrieval import knowledge_retrieve
from tests.openai_server import API_KEY, MODEL_ALIAS, OpenAIServer

pytestmark = pytest.mark.slow  # starts the embedding server

LEAVE = "# 假期制度\n\n## 年假\n\n员工入职满一年后享有5天带薪年假，需在OA系统提前三个工作日申请。\n"
SMOLLM2_WIDTH = 576


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAIServer]:
    from django.conf import settings

    log_path = tmp_path_factory.mktemp("embedding-server") / "server.log"
    server = OpenAIServer(
        model_path=settings.DEFAULT_MODEL_PATH, log_path=log_path, embedding=True
    ).start()
    yield server
    server.stop()


def _profile(server: OpenAIServer, **fields) -> ModelProfile:
    values = {
        "name": "remote embeddings",
        "kind": ModelProfile.Kind.REMOTE,
        "base_url": server.base_url,
        "remote_model": MODEL_ALIAS,
        "api_key": API_KEY,
        "context_size": 512,
    }
    values.update(fields)
    return ModelProfile.objects.create(**values)


@pytest.mark.django_db
def test_a_remote_profile_embeds_through_the_server(embedding_server, monkeypatch):
    monkeypatch.setattr(remote_embedders, "_BATCH", 4)
    spec = embedding_spec_for(_profile(embedding_server))
    assert isinstance(spec, RemoteEmbeddingSpec)
    assert spec.model_key == f"openai:{MODEL_ALIAS}@{embedding_server.base_url}"
    assert API_KEY not in repr(spec)
    embedder = get_embedder(spec)
    assert embedder.dimensions == SMOLLM2_WIDTH and embedder.max_tokens == 512
    texts = [f"第{i}条：年假需要提前申请" for i in range(6)]  # more than one request's batch
    vectors = np.asarray(embedder.embed([*texts, "食堂几点开饭"]))
    assert vectors.shape == (7, SMOLLM2_WIDTH)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert not np.allclose(vectors[0], vectors[6], atol=1e-2)
    # The width probe, then 7 texts in requests of at most 4; a text seen before is cached.
    assert embedder.embed([texts[5]])[0] == vectors[5].tolist()
    assert embedding_server.log().count('"POST /v1/embeddings HTTP/1.1" 200') == 3


@pytest.mark.django_db
def test_a_wrong_key_says_so(embedding_server):
    spec = embedding_spec_for(_profile(embedding_server, api_key="wrong"))
    with pytest.raises(EmbeddingError, match="401"):
        get_embedder(spec)


@pytest.mark.django_db
def test_a_knowledge_base_on_a_remote_profile_is_indexed_and_searched(
    embedding_server, settings, tmp_path: Path
):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    profile = _profile(embedding_server)
    kb = KnowledgeBase.objects.create(
        name="HR", slug="hr", embedder=KnowledgeBase.Embedders.GGUF, embedding_profile=profile
    )
    folder = tmp_path / "hr"
    folder.mkdir()
    (folder / "leave.md").write_text(LEAVE, encoding="utf-8")
    call_command("kb_ingest", "hr", str(folder), stdout=io.StringIO(), stderr=io.StringIO())
    key = embedding_spec_for(profile).model_key
    assert set(Chunk.objects.values_list("embedding_model", flat=True)) == {key}
    hits = knowledge_retrieve(
        bot_kb_ids=[kb.pk], readers=Readers.everything(), query="年假怎么申请", top_k=3
    )
    assert hits and hits[0].similarity is not None

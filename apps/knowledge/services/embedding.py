"""Which embedder a knowledge base uses, and the HNSW index for each vector width.

The embedders themselves live in `apps.inference.embedders` (the bundled multilingual
encoder, llama.cpp GGUF models), one per process. A knowledge base names the one it is
configured with; while a change re-indexes it in the background, `embedding_model` pins
the model whose vectors keep answering until the swap (`services.reembed`).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection

from apps.inference.embedders import (
    USE_MODEL_KEY,
    Embedder,
    EmbedderSpec,
    EmbeddingError,
    EmbeddingSpec,
    RemoteEmbeddingSpec,
    UseSpec,
    embedders_close,
    get_embedder,
    spec_from_model_key,
)
from apps.inference.models import ModelProfile
from apps.knowledge.models import KnowledgeBase

__all__ = [
    "Embedder",
    "EmbedderSpec",
    "EmbeddingError",
    "EmbeddingSpec",
    "embedder_spec_for",
    "embedders_close",
    "embedding_spec_for",
    "get_embedder",
    "serving_spec_for",
]

logger = logging.getLogger(__name__)

# pgvector's HNSW indexes `vector` columns of at most this many dimensions.
HNSW_MAX_DIMENSIONS = 2000
# Tokens one text may have (longer ones are truncated); ingestion keeps chunks within it.
_MAX_CONTEXT = 2048
_DEFAULT_CONTEXT = 1024


def embedding_spec_for(profile: ModelProfile | None) -> EmbeddingSpec | RemoteEmbeddingSpec:
    """A GGUF embedding profile (or a remote one's server), or the default GGUF model when
    there is none."""
    cache_size = settings.KNOWLEDGE_EMBEDDING_CACHE_SIZE
    if profile is not None and profile.is_remote:
        return RemoteEmbeddingSpec(
            base_url=profile.base_url,
            model=profile.remote_model,
            api_key=profile.api_key or "",
            max_tokens=min(profile.context_size, _MAX_CONTEXT),
            cache_size=cache_size,
        )
    if profile is None:
        path = settings.KNOWLEDGE_EMBEDDING_MODEL_PATH or settings.DEFAULT_MODEL_PATH
        return EmbeddingSpec(path=str(path), n_ctx=_DEFAULT_CONTEXT, cache_size=cache_size)
    return EmbeddingSpec(
        path=profile.gguf_path,
        n_ctx=min(profile.context_size, _MAX_CONTEXT),
        n_gpu_layers=profile.n_gpu_layers,
        n_threads=profile.threads,
        cache_size=cache_size,
    )


def bundled_spec() -> UseSpec:
    return UseSpec(
        threads=settings.KNOWLEDGE_EMBEDDING_THREADS or None,
        cache_size=settings.KNOWLEDGE_EMBEDDING_CACHE_SIZE,
    )


def embedder_spec_for(kb: KnowledgeBase) -> EmbedderSpec:
    """The embedder `kb` is configured with: what ingestion uses for new passages."""
    if kb.embedder == KnowledgeBase.Embedders.GGUF:
        return embedding_spec_for(kb.embedding_profile)
    return bundled_spec()


def serving_spec_for(kb: KnowledgeBase) -> EmbedderSpec | None:
    """The embedder whose vectors dense search reads for `kb` (and embeds questions with).

    The configured one, except while a change re-indexes: then the pinned model's. A pinned
    GGUF model is the knowledge base's profile when the key matches it, else known by its
    path only (context size and offload take the defaults); None if the key names nothing
    this version can load.
    """
    configured = embedder_spec_for(kb)
    if not kb.embedding_model or kb.embedding_model == configured.model_key:
        return configured
    if kb.embedding_model == USE_MODEL_KEY:
        return bundled_spec()
    profile_spec = embedding_spec_for(kb.embedding_profile)
    if kb.embedding_model == profile_spec.model_key:
        return profile_spec
    spec = spec_from_model_key(kb.embedding_model)
    if spec is None:
        return None
    return EmbeddingSpec(
        path=spec.path, n_ctx=_DEFAULT_CONTEXT, cache_size=settings.KNOWLEDGE_EMBEDDING_CACHE_SIZE
    )


# --- vector indexes ---------------------------------------------------------------------------

_indexed_dimensions: set[int] = set()


def embedding_index_name(dimensions: int) -> str:
    return f"chunk_embedding_hnsw_{dimensions}"


def embedding_index_ensure(*, dimensions: int) -> bool:
    """Create the cosine HNSW index for vectors of `dimensions` unless it exists.

    Migration 0002 made the one for 576 dimensions; a knowledge base with another embedding
    model gets its index here, before its first chunks are written. Returns False when
    pgvector cannot index that many dimensions (search then scans exactly, still correct).
    """
    if dimensions in _indexed_dimensions:
        return True
    if not 0 < dimensions <= HNSW_MAX_DIMENSIONS:
        logger.warning("%s-dimensional vectors are too wide for an HNSW index", dimensions)
        return False
    name = embedding_index_name(dimensions)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexname IS NOT NULL, t.tableowner = current_user FROM pg_tables t "
            "LEFT JOIN pg_indexes i ON i.tablename = t.tablename AND i.indexname = %s "
            "WHERE t.tablename = 'knowledge_chunk'",
            [name],
        )
        exists, owner = cursor.fetchone()
        if not exists and not owner:
            # The app role owns no table: the owner's function builds the index (migration
            # knowledge 0003), inside this transaction, so not CONCURRENTLY.
            cursor.execute("SELECT knowledge_embedding_index_ensure(%s)", [dimensions])
            if connection.in_atomic_block:
                return True
        elif not exists:
            # CONCURRENTLY keeps chunk writes flowing but cannot run inside a transaction;
            # an index made inside one exists only if that transaction commits.
            concurrently = not connection.in_atomic_block
            cursor.execute(
                f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS "
                f'"{name}" ON "knowledge_chunk" '
                f'USING hnsw ((("embedding")::vector({dimensions:d})) vector_cosine_ops) '
                f"WITH (m = 16, ef_construction = 64) "
                f'WHERE "embedding_dimensions" = {dimensions:d}'
            )
            if not concurrently:
                return True
    _indexed_dimensions.add(dimensions)
    return True

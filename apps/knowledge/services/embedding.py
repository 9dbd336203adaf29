"""Turn passages and questions into unit vectors with llama.cpp, one model per process.

Each embedding profile gets its own `llama_cpp.Llama(embedding=True)` (mean pooling),
separate from the chat engine, cached per process like the engine registry and never
carried across a fork. Vectors are mean-centred then normalised; see `Embedder`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from django.conf import settings
from django.db import connection

from apps.inference.models import ModelProfile

logger = logging.getLogger(__name__)

# pgvector's HNSW indexes `vector` columns of at most this many dimensions.
HNSW_MAX_DIMENSIONS = 2000
# Tokens one text may have (longer ones are truncated); ingestion keeps chunks within it.
_MAX_CONTEXT = 2048
_DEFAULT_CONTEXT = 1024

# Small decoder models used as embedders put every vector in a narrow cone (cosine 0.95+
# between unrelated Chinese sentences), which drowns the differences that matter. Subtracting
# the mean vector of these neutral sentences, in both languages, spreads them out again
# ("all-but-the-top", Mu & Viswanath 2018). Editing the list changes every vector: bump
# _RECIPE so that dense search ignores vectors made the old way until documents are re-indexed.
_RECIPE = "mean-centred-v1"
_CENTRING_SENTENCES = (
    "The weather is nice today.",
    "请把文件发给我。",
    "Quarterly revenue grew by ten percent.",
    "会议改到下午三点。",
    "Please reset my password.",
    "这个项目的截止日期是什么时候？",
    "I like to read books on weekends.",
    "北京今天下雨了。",
    "The train leaves from platform four.",
    "他们正在讨论新产品的设计方案。",
    "Send the invoice to the finance team.",
    "周末我们去公园散步吧。",
)


class EmbeddingError(Exception):
    """The embedding model cannot be loaded or run; callers show the message to admins."""


@dataclass(frozen=True)
class EmbeddingSpec:
    """How to load an embedding model; frozen and hashable because it is the cache key."""

    path: str
    n_ctx: int = 512
    n_gpu_layers: int = 0
    n_threads: int | None = None

    @property
    def model_key(self) -> str:
        """Identifies vectors made by this model and recipe; stored on every chunk."""
        return f"{self.path}#{_RECIPE}"


def embedding_spec_for(profile: ModelProfile | None) -> EmbeddingSpec:
    """A knowledge base's embedding profile, or the default model when it has none."""
    if profile is None:
        path = settings.KNOWLEDGE_EMBEDDING_MODEL_PATH or settings.DEFAULT_MODEL_PATH
        return EmbeddingSpec(path=str(path), n_ctx=_DEFAULT_CONTEXT)
    return EmbeddingSpec(
        path=profile.gguf_path,
        n_ctx=min(profile.context_size, _MAX_CONTEXT),
        n_gpu_layers=profile.n_gpu_layers,
        n_threads=profile.threads,
    )


class Embedder:
    """One llama.cpp context in embedding mode; calls are serialised, it is not thread-safe.

    Vectors come out mean-centred (see `_CENTRING_SENTENCES`) and L2-normalised, so the
    cosine distance pgvector computes is the one the centring was meant to improve.
    """

    def __init__(self, spec: EmbeddingSpec) -> None:
        import llama_cpp

        if not os.path.isfile(spec.path):
            raise EmbeddingError(f"Embedding model file not found: {spec.path}")
        self.spec = spec
        self._lock = threading.Lock()
        try:
            self._llama = llama_cpp.Llama(
                model_path=spec.path,
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=spec.n_ctx,
                n_batch=spec.n_ctx,
                n_ubatch=spec.n_ctx,
                n_gpu_layers=spec.n_gpu_layers,
                n_threads=spec.n_threads,
                n_threads_batch=spec.n_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EmbeddingError(f"Could not load embedding model {spec.path}: {exc}") from exc
        self.dimensions = int(self._llama.n_embd())
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._cache_size = settings.KNOWLEDGE_EMBEDDING_CACHE_SIZE
        self._centre = self._raw(list(_CENTRING_SENTENCES)).mean(axis=0)

    @property
    def max_tokens(self) -> int:
        return self.spec.n_ctx

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit vector per text, in order; recently seen texts come from a cache.

        Re-indexing a document whose passages barely changed, or a question asked again,
        then costs no model time.
        """
        found: dict[str, list[float]] = {}
        with self._lock:
            for text in texts:
                if text in self._cache:
                    self._cache.move_to_end(text)
                    found[text] = self._cache[text]
        missing = list(dict.fromkeys(text for text in texts if text not in found))
        if missing:
            vectors = self._raw(missing) - self._centre
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)
            with self._lock:
                for text, vector in zip(missing, vectors.tolist(), strict=True):
                    found[text] = vector
                    self._cache[text] = vector
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return [found[text] for text in texts]

    def _raw(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            try:
                raw = self._llama.embed(texts, truncate=True)
            except (RuntimeError, ValueError) as exc:
                raise EmbeddingError(f"Embedding failed: {exc}") from exc
        return np.asarray(raw, dtype=np.float32)

    def close(self) -> None:
        with self._lock:
            self._llama.close()


_state_lock = threading.Lock()
_embedders: dict[EmbeddingSpec, Embedder] = {}
_load_locks: dict[EmbeddingSpec, threading.Lock] = {}
_owner_pid = os.getpid()
# Models inherited through fork stay referenced so their finalizers never run here.
_inherited: list[Embedder] = []


def get_embedder(spec: EmbeddingSpec) -> Embedder:
    """This process's embedder for `spec`, loaded once even when threads race for it."""
    with _state_lock:
        _adopt_process()
        embedder = _embedders.get(spec)
        if embedder is not None:
            return embedder
        load_lock = _load_locks.setdefault(spec, threading.Lock())
    with load_lock:
        with _state_lock:
            _adopt_process()
            embedder = _embedders.get(spec)
        if embedder is not None:
            return embedder
        embedder = Embedder(spec)
        with _state_lock:
            _embedders[spec] = embedder
        return embedder


def embedders_close() -> None:
    """Free every embedding model this process loaded (worker shutdown, tests)."""
    with _state_lock:
        _adopt_process()
        embedders = list(_embedders.values())
        _embedders.clear()
        _load_locks.clear()
    for embedder in embedders:
        embedder.close()


def _adopt_process() -> None:
    global _owner_pid
    if os.getpid() != _owner_pid:
        _inherited.extend(_embedders.values())
        _embedders.clear()
        _load_locks.clear()
        _owner_pid = os.getpid()


def _reset_after_fork() -> None:
    global _state_lock
    _state_lock = threading.Lock()
    _adopt_process()


os.register_at_fork(after_in_child=_reset_after_fork)
# Free models before interpreter teardown, when llama.cpp's finalizers can no longer run.
atexit.register(embedders_close)


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

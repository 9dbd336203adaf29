"""llama.cpp GGUF models in embedding mode (bge-m3, Qwen3-Embedding …, GPU offload).

Each spec gets its own `llama_cpp.Llama(embedding=True)` (mean pooling), separate from the
chat engine. Vectors are mean-centred then normalised; see `LlamaEmbedder`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apps.inference.embedders.base import EmbeddingError, VectorCache

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


@dataclass(frozen=True)
class EmbeddingSpec:
    """How to load a GGUF embedding model; frozen and hashable because it is the cache key."""

    path: str
    n_ctx: int = 512
    n_gpu_layers: int = 0
    n_threads: int | None = None
    cache_size: int = 4096

    @property
    def model_key(self) -> str:
        """Identifies vectors made by this model and recipe; stored on every chunk."""
        return f"{self.path}#{_RECIPE}"


def spec_from_model_key(model_key: str) -> EmbeddingSpec | None:
    """The spec that made vectors tagged `model_key`, as far as the key tells (path only)."""
    path, _sep, recipe = model_key.rpartition("#")
    return EmbeddingSpec(path=path) if path and recipe == _RECIPE else None


class LlamaEmbedder:
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
        self._cache = VectorCache(spec.cache_size)
        self._centre = self._raw(list(_CENTRING_SENTENCES)).mean(axis=0)

    @property
    def model_key(self) -> str:
        return self.spec.model_key

    @property
    def max_tokens(self) -> int:
        return self.spec.n_ctx

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._cache.embed(texts, lambda missing: self._raw(missing) - self._centre)

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

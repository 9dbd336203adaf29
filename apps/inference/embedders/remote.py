"""Embeddings from an OpenAI-compatible server (`POST /v1/embeddings`: vLLM, TEI,
llama-server …), for knowledge bases whose embedding profile is a remote engine.

The server's vectors are used as they come (L2-normalised here); unlike the small decoder
models run locally, dedicated embedding models need no mean-centring. A server that sends
one vector per token (llama.cpp's servers for a model without a pooling type) gets them
mean-pooled here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from apps.inference.embedders.base import EmbeddingError, VectorCache

# Texts per request: servers cap the batch (vLLM by tokens, OpenAI at 2048 inputs).
_BATCH = 64
_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class RemoteEmbeddingSpec:
    """A server and model; frozen and hashable because it is the embedder cache key."""

    base_url: str  # up to and including the API version, e.g. "http://gpu-1:8000/v1"
    model: str
    api_key: str = field(default="", repr=False)
    max_tokens: int = 512  # chunks are kept within this (an estimate; see count_tokens)
    cache_size: int = 4096

    @property
    def model_key(self) -> str:
        """Identifies vectors made by this model; stored on every chunk."""
        return f"openai:{self.model}@{self.base_url.rstrip('/')}"


class RemoteEmbedder:
    """One connection pool per server and process; thread-safe (httpx's client is)."""

    def __init__(self, spec: RemoteEmbeddingSpec) -> None:
        self.spec = spec
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        self._client = httpx.Client(
            base_url=spec.base_url.rstrip("/") + "/", headers=headers, timeout=_TIMEOUT_SECONDS
        )
        self._cache = VectorCache(spec.cache_size)
        self._lock = threading.Lock()
        # The width is the model's; one probe tells it before anything is stored.
        self.dimensions = int(self._request(["dimensions"]).shape[1])

    @property
    def model_key(self) -> str:
        return self.spec.model_key

    @property
    def max_tokens(self) -> int:
        return self.spec.max_tokens

    def count_tokens(self, text: str) -> int:
        """An estimate (the tokenizer lives on the server): a CJK character is about one
        token, other text about four characters per token."""
        wide = sum(1 for char in text if ord(char) >= 0x2E80)
        return wide + (len(text) - wide + 3) // 4

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._cache.embed(texts, self._compute)

    def _compute(self, texts: list[str]) -> np.ndarray:
        parts = [self._request(texts[i : i + _BATCH]) for i in range(0, len(texts), _BATCH)]
        return np.concatenate(parts)

    def _request(self, texts: list[str]) -> np.ndarray:
        try:
            response = self._client.post(
                "embeddings", json={"model": self.spec.model, "input": texts}
            )
        except httpx.HTTPError as exc:
            raise EmbeddingError(f"{self.spec.base_url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise EmbeddingError(
                f"{self.spec.base_url} refused the embedding request: "
                f"HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            rows = sorted(response.json()["data"], key=lambda row: row["index"])
            vectors = np.stack([_pooled(row["embedding"]) for row in rows])
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"{self.spec.base_url} sent no embeddings: {exc}") from exc
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise EmbeddingError(
                f"{self.spec.base_url} sent {len(vectors)} vectors for {len(texts)} texts"
            )
        return vectors

    def close(self) -> None:
        self._client.close()


def _pooled(embedding: list[float] | list[list[float]]) -> np.ndarray:
    vector = np.asarray(embedding, dtype=np.float32)
    return vector.mean(axis=0) if vector.ndim == 2 else vector

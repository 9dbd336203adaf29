"""What every embedder offers, and the vector cache they share.

Ingestion and retrieval only use this interface, so a knowledge base can switch between
the bundled sentence encoder and a llama.cpp GGUF model without either side knowing which.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np


class EmbeddingError(Exception):
    """The embedding model cannot be loaded or run; callers show the message to admins."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors; one instance per model and process."""

    dimensions: int

    @property
    def model_key(self) -> str:
        """Identifies vectors made by this model and recipe; stored on every chunk."""
        ...

    @property
    def max_tokens(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def close(self) -> None: ...


class VectorCache:
    """A small LRU of text -> vector in front of a batched `compute`.

    Re-indexing a document whose passages barely changed, or a question asked again, then
    costs no model time; the texts that miss are computed in one batch.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()

    def embed(
        self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]
    ) -> list[list[float]]:
        found: dict[str, list[float]] = {}
        with self._lock:
            for text in texts:
                if text in self._vectors:
                    self._vectors.move_to_end(text)
                    found[text] = self._vectors[text]
        missing = list(dict.fromkeys(text for text in texts if text not in found))
        if missing:
            vectors = unit_rows(compute(missing))
            with self._lock:
                for text, vector in zip(missing, vectors.tolist(), strict=True):
                    found[text] = vector
                    self._vectors[text] = vector
                while len(self._vectors) > self._size:
                    self._vectors.popitem(last=False)
        return [found[text] for text in texts]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), as float32 for pgvector."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)

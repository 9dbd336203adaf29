"""Process-wide cache of loaded engines, one per spec (a local model or a remote server).

Loading a model takes seconds and a lot of memory, so each worker process loads a spec
once and every task in it shares the engine. Engines never cross a fork: llama.cpp (and
CUDA) state does not survive it, so Celery prefork children load their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from apps.core.process_cache import ProcessCache
from apps.inference.engine.base import Engine, EngineSpec, RemoteSpec

EngineFactory = Callable[[EngineSpec], Engine]


def _default_engine(spec: EngineSpec) -> Engine:
    """The remote engine for a server; locally the batching engine when the spec asks for
    several slots, else the single-stream one."""
    # Imported here so that importing the registry does not load libllama.
    if isinstance(spec, RemoteSpec):
        from apps.inference.engine.remote import RemoteEngine

        return RemoteEngine(spec)
    if spec.slots > 1:
        from apps.inference.engine.batching import BatchingEngine

        return BatchingEngine(spec, slots=spec.slots, prefix_cache_size=spec.prefix_cache_size)
    from apps.inference.engine.llama import LlamaEngine

    return LlamaEngine(spec)


_factory: EngineFactory = _default_engine
_factory_lock = threading.Lock()
_engines: ProcessCache[EngineSpec, Engine] = ProcessCache()


def register_engine_factory(factory: EngineFactory) -> EngineFactory:
    """Make `get_engine` build engines with `factory` from now on; returns the previous one.

    Engines already loaded stay cached; call `close_all()` first to replace them too.
    """
    global _factory
    with _factory_lock:
        previous, _factory = _factory, factory
    return previous


def get_engine(spec: EngineSpec) -> Engine:
    """Return this process's engine for `spec`, loading it on first use (once, even if racing)."""
    with _factory_lock:
        factory = _factory
    return _engines.get(spec, factory)


def close_all() -> None:
    """Close and forget every engine this process loaded (worker shutdown, tests)."""
    for engine in _engines.clear():
        engine.close()


def loaded_specs() -> list[EngineSpec]:
    """The specs with an engine loaded in this process, for health checks and the admin."""
    return _engines.keys()

"""Process-wide cache of loaded engines, one per ModelSpec.

Loading a model takes seconds and a lot of memory, so each worker process loads a spec
once and every task in it shares the engine. Engines never cross a fork: llama.cpp (and
CUDA) state does not survive it, so Celery prefork children load their own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from apps.inference.engine.base import Engine, ModelSpec

EngineFactory = Callable[[ModelSpec], Engine]


def _default_engine(spec: ModelSpec) -> Engine:
    """The batching engine when the spec asks for several slots, else the single-stream one."""
    # Imported here so that importing the registry does not load libllama.
    if spec.slots > 1:
        from apps.inference.engine.batching import BatchingEngine

        return BatchingEngine(spec, slots=spec.slots, prefix_cache_size=spec.prefix_cache_size)
    from apps.inference.engine.llama import LlamaEngine

    return LlamaEngine(spec)


_factory: EngineFactory = _default_engine
_state_lock = threading.Lock()
_engines: dict[ModelSpec, Engine] = {}
_load_locks: dict[ModelSpec, threading.Lock] = {}
_owner_pid = os.getpid()
# Engines inherited from a parent process: kept referenced so their finalizers never run
# here (freeing another process's GPU state can crash), and never handed out.
_inherited: list[Engine] = []


def register_engine_factory(factory: EngineFactory) -> EngineFactory:
    """Make `get_engine` build engines with `factory` from now on; returns the previous one.

    Engines already loaded stay cached; call `close_all()` first to replace them too.
    """
    global _factory
    with _state_lock:
        previous, _factory = _factory, factory
    return previous


def get_engine(spec: ModelSpec) -> Engine:
    """Return this process's engine for `spec`, loading it on first use (once, even if racing)."""
    with _state_lock:
        _adopt_process()
        engine = _engines.get(spec)
        if engine is not None:
            return engine
        load_lock = _load_locks.setdefault(spec, threading.Lock())
    with load_lock:
        with _state_lock:
            _adopt_process()
            engine = _engines.get(spec)
            factory = _factory
        if engine is not None:
            return engine
        # Loading happens outside the state lock so other specs stay available meanwhile.
        engine = factory(spec)
        with _state_lock:
            _engines[spec] = engine
        return engine


def close_all() -> None:
    """Close and forget every engine this process loaded (worker shutdown, tests)."""
    with _state_lock:
        _adopt_process()
        engines = list(_engines.values())
        _engines.clear()
        _load_locks.clear()
    for engine in engines:
        engine.close()


def loaded_specs() -> list[ModelSpec]:
    """The specs with an engine loaded in this process, for health checks and the admin."""
    with _state_lock:
        _adopt_process()
        return list(_engines)


def _adopt_process() -> None:
    """Forget engines created by another process; call with `_state_lock` held."""
    global _owner_pid
    if os.getpid() != _owner_pid:
        _inherited.extend(_engines.values())
        _engines.clear()
        _load_locks.clear()
        _owner_pid = os.getpid()


def _reset_after_fork() -> None:
    # Another thread may have held a lock at fork time; in the child it would never be freed.
    global _state_lock
    _state_lock = threading.Lock()
    _adopt_process()


os.register_at_fork(after_in_child=_reset_after_fork)

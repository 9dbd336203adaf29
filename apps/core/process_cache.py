"""One value per key and process, loaded once, never carried across a fork.

Engines and embedders hold llama.cpp (and CUDA) state that does not survive a fork, and
loading one takes seconds and much memory: each process loads a key once, however many
threads race for it, and a forked child (a Celery prefork worker) loads its own. Values
inherited from the parent are kept referenced, never handed out, so their finalizers never
free another process's state.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_caches: weakref.WeakSet[ProcessCache[object, object]] = weakref.WeakSet()


class ProcessCache(Generic[K, V]):
    def __init__(self) -> None:
        self._state_lock = threading.Lock()
        self._values: dict[K, V] = {}
        self._load_locks: dict[K, threading.Lock] = {}
        self._owner_pid = os.getpid()
        self._inherited: list[V] = []
        _caches.add(self)  # type: ignore[arg-type]

    def get(self, key: K, load: Callable[[K], V]) -> V:
        """This process's value for `key`, loaded by `load` on first use (once, even racing).

        Loading happens outside the state lock, so other keys stay available meanwhile.
        """
        with self._state_lock:
            self._adopt_process()
            value = self._values.get(key)
            if value is not None:
                return value
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:
            with self._state_lock:
                self._adopt_process()
                value = self._values.get(key)
            if value is not None:
                return value
            value = load(key)
            with self._state_lock:
                self._values[key] = value
            return value

    def keys(self) -> list[K]:
        """The keys with a value loaded in this process."""
        with self._state_lock:
            self._adopt_process()
            return list(self._values)

    def clear(self) -> list[V]:
        """Forget every value this process loaded and return them, for the caller to close."""
        with self._state_lock:
            self._adopt_process()
            values = list(self._values.values())
            self._values.clear()
            self._load_locks.clear()
        return values

    def _adopt_process(self) -> None:
        # Call with the state lock held.
        if os.getpid() != self._owner_pid:
            self._inherited.extend(self._values.values())
            self._values.clear()
            self._load_locks.clear()
            self._owner_pid = os.getpid()

    def _reset_after_fork(self) -> None:
        # Another thread may have held a lock at fork time; in the child it is never freed.
        self._state_lock = threading.Lock()
        self._adopt_process()


def _reset_all_after_fork() -> None:
    for cache in list(_caches):
        cache._reset_after_fork()


os.register_at_fork(after_in_child=_reset_all_after_fork)

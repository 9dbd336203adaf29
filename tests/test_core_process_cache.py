"""The kernel's per-process cache behind the engine and embedder registries: one load per
key however many threads race, and nothing carried into a forked child."""

from __future__ import annotations

import os
import threading
import time

import pytest

from apps.core.process_cache import ProcessCache


class Loaded:
    def __init__(self, key: str) -> None:
        self.key, self.pid = key, os.getpid()


def test_racing_threads_load_a_key_once_and_other_keys_stay_available() -> None:
    cache: ProcessCache[str, Loaded] = ProcessCache()
    loads: list[str] = []
    release = threading.Event()

    def slow_load(key: str) -> Loaded:
        loads.append(key)
        if key == "big":
            release.wait(5)
        return Loaded(key)

    results: list[Loaded] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("big", slow_load)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    # While "big" is loading, another key loads at once instead of waiting behind it
    deadline = time.monotonic() + 5
    while "big" not in loads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get("small", slow_load).key == "small"
    release.set()
    for thread in threads:
        thread.join(5)
    assert loads.count("big") == 1 and len(results) == 4
    assert len({id(result) for result in results}) == 1
    assert sorted(cache.keys()) == ["big", "small"]
    # clear hands the values back for closing and forgets them
    assert {value.key for value in cache.clear()} == {"big", "small"}
    assert cache.keys() == [] and cache.get("big", Loaded) is not results[0]


@pytest.mark.slow  # forks
def test_a_forked_child_loads_its_own_value_and_never_gets_the_parents() -> None:
    cache: ProcessCache[str, Loaded] = ProcessCache()
    parent_value = cache.get("model", Loaded)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            child_value = cache.get("model", Loaded)
            ok = child_value is not parent_value and child_value.pid == os.getpid()
            os.write(write, b"1" if ok and cache.keys() == ["model"] else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    # the parent's value is untouched by the child's fork and load
    assert cache.get("model", Loaded) is parent_value

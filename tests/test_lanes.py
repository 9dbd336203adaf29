"""`make test-fast` leaves out every test that starts a process or a live server.

Tests reaching a process fixture are marked slow at collection; a test outside the slow
lane that starts a process anyway fails, so the marks stay true as tests are added.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    PROCESS_FIXTURES,
    ProcessInFastTest,
    process_guard,
    pytest_collection_modifyitems,
)
from tests.wecomsdk.build import build_test_sdk


class _Item:
    """What the collection hook reads of a pytest item: its fixture closure and marks."""

    def __init__(self, *fixturenames: str) -> None:
        self.fixturenames = list(fixturenames)
        self.markers: list[str] = []

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.markers.append(marker.name)


def test_tests_reaching_a_process_fixture_are_marked_slow(pytestconfig) -> None:
    # simulator_for reaches live_server; a module fixture built on start_worker lists it too
    items = [
        _Item("db", "bot", "simulator_for", "live_server", "response_server"),
        _Item("transactional_db", "archive_worker", "start_worker"),
        _Item("transactional_db", "asgi_server"),
        _Item("db", "bot", "model_profile", "response_server"),
    ]

    pytest_collection_modifyitems(pytestconfig, items)  # type: ignore[arg-type]

    assert [item.markers for item in items] == [["slow"], ["slow"], ["slow"], []]
    assert {"start_worker", "asgi_server", "live_server"} <= PROCESS_FIXTURES


def test_fixturenames_hold_the_whole_closure(request, tmp_path: Path) -> None:
    # The hook relies on pytest listing indirect fixtures (tmp_path -> tmp_path_factory,
    # simulator_for -> live_server) in an item's `fixturenames`.
    assert "tmp_path_factory" in request.node.fixturenames


def test_a_process_started_outside_the_slow_lane_is_refused_and_recorded() -> None:
    with process_guard() as refused:
        with pytest.raises(ProcessInFastTest):
            subprocess.run([sys.executable, "-c", "pass"], check=False)
        # swallowed by the code under test: still recorded, so the test still fails
        with contextlib.suppress(Exception):
            subprocess.Popen(["true"])
        with pytest.raises(ProcessInFastTest):
            os.fork()

    assert refused == [f"{sys.executable} -c pass", "true", "os.fork"]


def test_building_the_archive_sdk_stand_in_is_allowed(tmp_path: Path) -> None:
    with process_guard() as refused:
        library = build_test_sdk(tmp_path)

    assert refused == [] and library.is_file()


def test_the_guard_puts_everything_back() -> None:
    fork, execute_child = os.fork, subprocess.Popen._execute_child  # type: ignore[attr-defined]
    with process_guard():
        pass
    assert os.fork is fork
    assert subprocess.Popen._execute_child is execute_child  # type: ignore[attr-defined]

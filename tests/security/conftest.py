"""Fixtures of the trust-boundary tests: the real ASGI app served by uvicorn on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import BASE_DIR, worker_env


@pytest.fixture
def asgi_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "wecom_ai.asgi:application",
         "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        cwd=BASE_DIR, env=worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://{base}/healthz", trust_env=False).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    yield base
    process.terminate()
    process.wait(timeout=20)

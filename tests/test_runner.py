"""`make run`'s supervisor: the whole stack comes up, answers the demo bot, and stops cleanly."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import BASE_DIR, worker_env
from wecom.crypto import generate_encoding_aes_key

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_serves_admin_and_demo_bot_then_stops_every_child(tmp_path: Path):
    port = _free_port()
    env = worker_env(
        PORT=str(port),
        ADMIN_PASSWORD="correct-horse-battery",
        DEMO_BOT_TOKEN="DemoToken123",
        DEMO_BOT_AES_KEY=generate_encoding_aes_key(),
    )
    log = (tmp_path / "run.log").open("w+b")
    runner = subprocess.Popen(
        [sys.executable, "-m", "wecom_ai.runner"],
        cwd=BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert runner.poll() is None, Path(log.name).read_text()
            try:
                if httpx.get(base + "/healthz", trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.5)
        output = Path(log.name).read_text()
        assert f"{base}/admin/" in output
        assert f"{base}/wecom/aibot/demo/callback" in output
        assert httpx.get(base + "/admin/login/", trust_env=False).status_code == 200
        children = psutil.Process(runner.pid).children(recursive=True)
        assert len(children) >= 4

        sim = subprocess.run(
            [sys.executable, "manage.py", "wecom_sim", "demo", "@demo hello", "--json",
             "--url", base, "--timeout", "180"],
            cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr + Path(log.name).read_text()[-4000:]
        result = json.loads(sim.stdout)
        assert result["finished"] is True
        assert result["answer"].strip()
    finally:
        runner.send_signal(signal.SIGTERM)
        code = runner.wait(timeout=60)
    assert code == 0, Path(log.name).read_text()[-4000:]
    assert "all stopped" in Path(log.name).read_text()
    time.sleep(0.5)
    assert not [child for child in children if child.is_running() and child.status() != "zombie"]

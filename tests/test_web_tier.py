"""The web tier acks in parallel: under ASGI no request is held on a sync thread of its own,
and `make run` serves HTTP from several processes on pooled database connections."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.test import AsyncClient
from django.utils.module_loading import import_string

from apps.bots import views
from tests.conftest import BASE_DIR, worker_env
from wecom_ai import runner


def test_every_middleware_is_async_capable():
    # One sync-only middleware would hold every request on a sync thread of its own.
    sync_only = [
        path
        for path in settings.MIDDLEWARE
        if not getattr(import_string(path), "async_capable", False)
    ]
    assert sync_only == []


def test_the_callback_view_is_async_and_its_work_runs_on_the_thread_pool():
    assert iscoroutinefunction(views.callback)
    assert views._callback_in_pool.func is views.callback_sync  # type: ignore[attr-defined]
    assert views._callback_in_pool._thread_sensitive is False  # type: ignore[attr-defined]


def test_the_other_doors_callbacks_are_async_and_share_the_pool_too():
    from apps.wechat import views as mp_views
    from apps.wecomapp import views as app_views

    assert iscoroutinefunction(app_views.callback)
    assert app_views._callback_in_pool.func is app_views.callback_sync  # type: ignore[attr-defined]
    assert app_views._callback_in_pool._thread_sensitive is False  # type: ignore[attr-defined]
    assert iscoroutinefunction(mp_views.mp_callback)
    assert mp_views._in_pool(len)._thread_sensitive is False  # type: ignore[attr-defined]


def test_request_id_is_set_and_echoed_on_the_async_path():
    async def fetch() -> tuple[httpx.Headers, httpx.Headers]:
        client = AsyncClient()
        made = await client.get("/healthz")
        given = await client.get("/healthz", headers={"X-Request-ID": "proxy-id-1"})
        return made.headers, given.headers  # type: ignore[return-value]

    made, given = asyncio.run(fetch())
    assert len(made["X-Request-ID"]) == 32
    assert given["X-Request-ID"] == "proxy-id-1"


def test_static_files_are_served_on_the_async_path(settings):
    settings.WHITENOISE_USE_FINDERS = True  # the files without collectstatic

    async def fetch() -> tuple[int, bytes, int]:
        client = AsyncClient()
        static = await client.get(settings.STATIC_URL + "admin/css/base.css")
        body = b"".join(static.streaming_content)  # type: ignore[attr-defined]
        missing = await client.get(settings.STATIC_URL + "admin/css/no-such-file.css")
        return static.status_code, body, missing.status_code

    status, body, missing = asyncio.run(fetch())
    assert status == 200
    assert b"body" in body
    assert missing == 404


@pytest.mark.parametrize(
    ("value", "cpus", "expected"),
    [("", 2, 2), ("", 1, 1), ("", 32, runner.MAX_DEFAULT_WEB_PROCESSES), ("3", 2, 3)],
)
def test_web_processes_default_to_the_cpus_up_to_four(monkeypatch, value, cpus, expected):
    monkeypatch.setattr(runner.os, "cpu_count", lambda: cpus)
    assert runner.web_processes({"WEB_CONCURRENCY": value}) == expected


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_web_concurrency_stops_the_runner_with_its_name(value):
    with pytest.raises(SystemExit, match="WEB_CONCURRENCY"):
        runner.web_processes({"WEB_CONCURRENCY": value})


def test_the_runner_starts_uvicorn_with_its_processes_and_a_connection_pool(tmp_path: Path):
    web = next(child for child in runner._children(8000, tmp_path, 3) if child.name == "web")
    workers = web.command.index("--workers")
    assert web.command[workers + 1] == "3"
    assert web.env["CONN_MAX_AGE"] == "0"
    assert int(web.env["DATABASE_POOL_SIZE"]) >= 1


# --- several uvicorn processes on a connection pool, as `make run` starts them ---------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


METRICS_TOKEN = "web-tier-metrics-token"


@pytest.fixture
def pooled_web(transactional_db: None, tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    port = _free_port()
    env = worker_env(
        DATABASE_POOL_SIZE="2", METRICS_TOKEN=METRICS_TOKEN,
        PROMETHEUS_MULTIPROC_DIR=runner.metrics_dir_fresh(str(tmp_path / "metrics")),
    )  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "wecom_ai.asgi:application",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--no-access-log"],
        cwd=BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", trust_env=False).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    master = psutil.Process(process.pid)
    yield base, master
    # The workers hold pooled connections: wait for them too, not only for the master, or
    # the test database still has their sessions when it is dropped.
    workers = master.children(recursive=True)
    process.terminate()
    process.wait(timeout=30)
    _gone, alive = psutil.wait_procs(workers, timeout=30)
    for worker in alive:
        worker.kill()


@pytest.mark.slow
def test_two_processes_on_a_pool_ack_concurrent_mentions_once_each(pooled_web, bot):
    from apps.bots.models import Turn
    from wecom.simulator import WeComSimulator

    base, server = pooled_web
    serving = [child for child in server.children() if "python" in child.name().lower()]
    assert len(serving) >= 2

    def simulator() -> WeComSimulator:
        return WeComSimulator(
            callback_url=base + bot.callback_path(),
            token=bot.token,
            encoding_aes_key=bot.encoding_aes_key,
            bot_name=bot.name,
        )

    def ask(index: int) -> str:
        with simulator() as sim:
            message = sim.text_message(f"question {index}", userid=f"user-{index}")
            return str(sim.decrypt_reply(sim.post_message(message))["stream"]["id"])  # type: ignore[index]

    with simulator() as sim:
        repeated = sim.text_message("asked twice", userid="user-repeat")

    def deliver_repeat(_: int) -> str:
        with simulator() as sim:
            return str(sim.decrypt_reply(sim.post_message(repeated))["stream"]["id"])  # type: ignore[index]

    with ThreadPoolExecutor(max_workers=12) as pool:
        asked = list(pool.map(ask, range(16)))
        repeats = list(pool.map(deliver_repeat, range(4)))
        admin = list(pool.map(lambda _: httpx.get(base + "/admin/login/").status_code, range(4)))

    assert len(set(asked)) == 16
    assert len(set(repeats)) == 1
    assert admin == [200] * 4
    assert Turn.objects.filter(bot=bot).count() == 17
    assert Turn.objects.filter(bot=bot, msgid=repeated["msgid"]).count() == 1
    # Both processes' samples, whichever one answers the scrape.
    metrics = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    acked = [
        line
        for line in metrics.text.splitlines()
        if line.startswith("wecomai_http_request_duration_seconds_count{")
        and 'route="bots:callback"' in line
        and 'status="200"' in line
    ]
    assert len(acked) == 1 and float(acked[0].rsplit(" ", 1)[1]) == 20


_POOL_OF_SETTINGS = (
    "import json, wecom_ai.settings as s; db = s.DATABASES['default']; "
    "print(json.dumps([db['CONN_MAX_AGE'], db['OPTIONS'].get('pool')]))"
)


@pytest.mark.slow
def test_database_pool_size_gives_a_fixed_pool_and_no_persistent_connections():
    def child(size: str) -> subprocess.CompletedProcess[str]:
        env = worker_env(DATABASE_POOL_SIZE=size, CONN_MAX_AGE="60")
        return subprocess.run(
            [sys.executable, "-c", _POOL_OF_SETTINGS],
            cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    pooled, unpooled, negative = child("3"), child("0"), child("-1")
    assert pooled.stdout.strip() == '[0, {"min_size": 3, "max_size": 3, "timeout": 10}]'
    assert unpooled.stdout.strip() == "[60, null]"
    assert negative.returncode != 0 and "DATABASE_POOL_SIZE" in negative.stderr

"""Shared fixtures: real embedded PostgreSQL and Redis, the real model, real worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from django.conf import settings

BASE_DIR = Path(__file__).resolve().parent.parent

# llama.cpp's CPU backend runs on OpenMP, whose threads spin while they wait. Next to a
# second pytest-xdist worker (or anything else on a small machine) the spinning threads
# take the cores that the thread they wait for needs: a 1 s generation took 15 to 50 s on
# 2 cores. Waiting threads sleep instead; read by libgomp when llama.cpp first loads (no
# test module imports it before this conftest), and inherited by the workers tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# (user, password) of the tables' owner while the tests connect as the app role; see
# `django_db_setup` below. None when the run has no separate app role.
_OWNER_CREDENTIALS: tuple[str, str] | None = None


def _connect_as(user: str, password: str) -> None:
    """Point the default connection at another role; the next query reconnects."""
    from django.db import connections

    connection = connections["default"]
    connection.close()
    connection.settings_dict["USER"] = user
    connection.settings_dict["PASSWORD"] = password


@contextlib.contextmanager
def as_database_owner() -> Iterator[None]:
    """Run a block on the default connection as the owner of the tables (outside any
    transaction: switching roles reconnects)."""
    from django.db import connection

    if _OWNER_CREDENTIALS is None:
        yield
        return
    app = (connection.settings_dict["USER"], connection.settings_dict["PASSWORD"])
    _connect_as(*_OWNER_CREDENTIALS)
    try:
        yield
    finally:
        _connect_as(*app)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Create the test database as the owner, then run every test as the app role.

    The app role is what web and workers use (issue 9): not a superuser, not the tables'
    owner, only INSERT/SELECT on the ledger. Tests that must act as an attacker with full
    database access use `owner_sql`.
    """
    global _OWNER_CREDENTIALS
    from django.db import connection

    from wecom_ai import embedded

    if not (settings.EMBEDDED_DATABASE and settings.DATABASE_APP_ROLE):
        yield
        return
    owner = (connection.settings_dict["USER"], connection.settings_dict["PASSWORD"])
    with django_db_blocker.unblock():
        _connect_as(*embedded.role_credentials(settings.DATABASE_APP_ROLE))
    _OWNER_CREDENTIALS = owner
    try:
        yield
    finally:
        _OWNER_CREDENTIALS = None
        with django_db_blocker.unblock():
            _connect_as(*owner)


@pytest.fixture(scope="session", autouse=True)
def _password_hashing_in_one_round() -> Iterator[None]:
    """Users made and logged in by in-process tests hash with one PBKDF2 round.

    Django's million rounds cost 0.25 s of CPU per hash, and the suite makes and checks a
    few hundred passwords; worker processes started by tests keep the real hasher.
    """
    from django.test.utils import override_settings

    with override_settings(PASSWORD_HASHERS=["tests.hashers.OneRoundPBKDF2PasswordHasher"]):
        yield


def _owner_flush() -> None:
    """Let transactional tests' teardown flush run although the ledger refuses TRUNCATE.

    The ledger's triggers reject DELETE/TRUNCATE (that is the point) and the app role may
    truncate nothing; between transactional tests the test database is emptied by `flush`
    as the owner, which removes the ledger's rows first with the user triggers disabled.
    """
    from django.core.management.commands import flush

    original = flush.Command.handle

    def handle(self, **options):  # type: ignore[no-untyped-def]
        from django.db import connections

        with as_database_owner():
            connection = connections[options.get("database") or "default"]
            with connection.cursor() as cursor:
                for table in ("audit_ledgerentry", "audit_ledgercheckpoint"):
                    cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
                    cursor.execute(f"DELETE FROM {table}")
                    cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
            return original(self, **options)

    flush.Command.handle = handle


_owner_flush()


@pytest.fixture
def owner_sql(transactional_db: None) -> Callable[..., list[tuple[Any, ...]]]:
    """Run statements on the test database as the tables' owner, in one transaction of its
    own connection: what an attacker with full database access (or a DBA) could do.

    Each statement is SQL text or (SQL, params); returns the last one's rows.
    """
    import psycopg

    def run(*statements: str | tuple[str, Sequence[Any]]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        with psycopg.connect(database_url(credentials=_OWNER_CREDENTIALS)) as conn:
            for statement in statements:
                text, params = (statement, None) if isinstance(statement, str) else statement
                cursor = conn.execute(text, params)
                rows = cursor.fetchall() if cursor.description else []
        return rows

    return run


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from wecom_ai import embedded

    embedded.stop_started_here()


@pytest.fixture(autouse=True)
def _redis_clean() -> Iterator[None]:
    """Each test starts with empty stream state, rate limits and queues (test Redis DBs only)."""
    import redis

    assert settings.REDIS_DB_BASE >= 8, "tests must never flush the development Redis DBs"
    for offset in range(4):
        redis.Redis.from_url(f"{settings.REDIS_URL}/{settings.REDIS_DB_BASE + offset}").flushdb()
    yield


@pytest.fixture(autouse=True)
def _ledger_anchor_file(settings: Any, tmp_path: Path) -> None:
    """Each test exports ledger checkpoints to a file of its own (its ledger is its own)."""
    settings.AUDIT_LEDGER_ANCHOR_FILE = str(tmp_path / "ledger-anchors.jsonl")


def database_url(credentials: tuple[str, str] | None = None) -> str:
    """A URL for the test database, for worker processes started by tests (as the app role
    unless other credentials are given)."""
    from django.db import connection

    conf = connection.settings_dict
    user, password = credentials or (conf.get("USER") or "", conf.get("PASSWORD") or "")
    user, password = quote(user, safe=""), quote(password, safe="")
    host = conf.get("HOST") or ""
    port = conf.get("PORT") or ""
    if host.startswith("/"):
        return f"postgresql://{user}:{password}@/{conf['NAME']}?host={host}"
    return f"postgresql://{user}:{password}@{host}:{port}/{conf['NAME']}"


def worker_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_ENV": "test",
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "REDIS_DB_BASE": str(settings.REDIS_DB_BASE),
            "CONN_MAX_AGE": "0",
        }
    )
    env.update(overrides)
    return env


def turn_terminal(msgid: str, timeout: float = 60.0):
    """The turn once its worker has recorded how it ended.

    The worker finishes the WeCom stream a moment before it commits the turn's row, so a
    simulator that has just seen `finish` may still read the turn as generating.
    """
    from apps.bots.models import Turn

    deadline = time.monotonic() + timeout
    while True:
        turn = Turn.objects.get(msgid=msgid)
        if turn.is_terminal:
            return turn
        assert time.monotonic() < deadline, f"turn {turn.pk} stuck in {turn.status}"
        time.sleep(0.1)


class WorkerProcess:
    """A real `celery worker` (prefork unless told otherwise) on the test database and Redis."""

    def __init__(
        self,
        *,
        queues: str,
        concurrency: int = 1,
        pool: str = "prefork",
        args: Sequence[str] = (),
        **env: str,
    ) -> None:
        self.log_path = Path(settings.DATA_DIR) / f"test-worker-{os.getpid()}-{time.time_ns()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "wecom_ai", "worker",
                "-Q", queues, "-c", str(concurrency), "-P", pool,
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-n", f"test-{time.time_ns()}@%h", "--loglevel", "INFO", *args,
            ],
            cwd=BASE_DIR,
            env=worker_env(**env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            self.wait_ready()
        except BaseException:
            # Never leave a worker behind: it would keep taking later tests' tasks.
            self.stop()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            if " ready." in self.log():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.log()}")

    def pool_children(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        if os.environ.get("KEEP_WORKER_LOGS") != "1":
            self.log_path.unlink(missing_ok=True)


@pytest.fixture
def start_worker(transactional_db: None) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(
        *,
        queues: str = "inference,default",
        concurrency: int = 1,
        pool: str = "prefork",
        args: Sequence[str] = (),
        **env: str,
    ) -> WorkerProcess:
        worker = WorkerProcess(queues=queues, concurrency=concurrency, pool=pool, args=args, **env)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def model_profile(db: None):
    from apps.inference.models import ModelProfile

    model_path = os.environ.get("WECOM_AI_MODEL_PATH", settings.DEFAULT_MODEL_PATH)
    if not Path(model_path).is_file():
        pytest.fail(f"the default model is missing at {model_path}; run `make bootstrap`")
    return ModelProfile.objects.create(
        name="SmolLM2 test", gguf_path=model_path, context_size=2048, temperature=0.0
    )


@pytest.fixture
def make_bot(model_profile):
    from apps.bots.models import Bot
    from wecom.crypto import generate_encoding_aes_key, generate_token

    def make(**fields):
        values = {
            "name": "HR助手",
            "slug": "hr",
            "token": generate_token(),
            "encoding_aes_key": generate_encoding_aes_key(),
            "model_profile": model_profile,
            "system_prompt": "You are a concise HR assistant.",
            "max_tokens": 48,
            "temperature": 0.0,
            "welcome_message": "欢迎使用HR助手",
        }
        values.update(fields)
        return Bot.objects.create(**values)

    return make


@pytest.fixture
def bot(make_bot):
    return make_bot()


@pytest.fixture
def response_server():
    from wecom.simulator import ResponseUrlServer

    with ResponseUrlServer() as server:
        yield server


@pytest.fixture
def simulator_for(live_server, response_server):
    from wecom.simulator import WeComSimulator

    made: list[WeComSimulator] = []

    def make(bot, **kwargs) -> WeComSimulator:
        sim = WeComSimulator(
            callback_url=live_server.url + bot.callback_path(),
            token=bot.token,
            encoding_aes_key=bot.encoding_aes_key,
            response_server=response_server,
            refresh_interval=kwargs.pop("refresh_interval", 0.1),
            bot_name=bot.name,
            **kwargs,
        )
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.close()


@pytest.fixture
def asgi_server() -> Iterator[str]:
    """The real ASGI app (HTTP and WebSockets) under uvicorn on a free loopback port."""
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


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real OpenAI-compatible server (`llama_cpp.server`) with the bundled model."""
    from tests.openai_server import OpenAIServer

    model_path = os.environ.get("WECOM_AI_MODEL_PATH", settings.DEFAULT_MODEL_PATH)
    log_path = tmp_path_factory.mktemp("openai-server") / "server.log"
    server = OpenAIServer(model_path=model_path, log_path=log_path).start()
    yield server
    server.stop()


# --- lanes: `make test-fast` runs every test not marked slow ---------------------------------

# Fixtures that start a process or serve the app on a live port. A test whose fixture closure
# reaches one of them is slow, however it got there (`simulator_for` through `live_server`,
# module fixtures through `start_worker`); tests that spawn a process themselves carry an
# explicit `@pytest.mark.slow`.
PROCESS_FIXTURES = frozenset({"start_worker", "asgi_server", "live_server", "openai_server"})

# Short-lived build tools a fast test may still run: the C compiler that builds the archive
# SDK stand-in and the test libraries (a fraction of a second, needed by `make` anyway).
BUILD_TOOLS = frozenset({"cc", "gcc", "clang", Path(os.environ.get("CC", "cc")).name})


class ProcessInFastTest(AssertionError):
    """A test outside the slow lane started a process: mark it (or its fixture) slow."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark slow before `-m "not slow"` deselects, so the fast lane never sees these tests."""
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@contextlib.contextmanager
def process_guard() -> Iterator[list[str]]:
    """Refuse (and record) any process started inside the block, build tools aside.

    Recorded as well as raised: code under test may swallow the exception, the record
    still fails the test. Yields the list of refused commands.
    """
    refused: list[str] = []
    execute_child = subprocess.Popen._execute_child  # type: ignore[attr-defined]
    fork, posix_spawn, posix_spawnp = os.fork, os.posix_spawn, os.posix_spawnp

    def refuse(what: str) -> ProcessInFastTest:
        refused.append(what)
        return ProcessInFastTest(f"a test not marked slow started a process: {what}")

    def guarded_execute_child(self, args, executable, *rest, **kwargs):  # type: ignore[no-untyped-def]
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        if Path(os.fsdecode(executable or argv[0])).name not in BUILD_TOOLS:
            raise refuse(" ".join(map(os.fsdecode, argv)))
        return execute_child(self, args, executable, *rest, **kwargs)

    def guarded(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise refuse(f"os.{name}")

        return call

    subprocess.Popen._execute_child = guarded_execute_child  # type: ignore[attr-defined]
    os.fork, os.posix_spawn, os.posix_spawnp = (
        guarded("fork"), guarded("posix_spawn"), guarded("posix_spawnp")
    )  # fmt: skip
    try:
        yield refused
    finally:
        subprocess.Popen._execute_child = execute_child  # type: ignore[attr-defined]
        os.fork, os.posix_spawn, os.posix_spawnp = fork, posix_spawn, posix_spawnp


def _guarded_phase(item: pytest.Item) -> Iterator[None]:
    if item.get_closest_marker("slow"):
        return (yield)
    with process_guard() as refused:
        result = yield
    if refused:
        raise ProcessInFastTest(
            f"{item.nodeid} is not marked slow but started: {'; '.join(refused)}"
        )
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    return (yield from _guarded_phase(item))


@pytest.fixture
def app_callback_on_test_thread(monkeypatch):
    """The self-built app's callback work on the test's own thread and connection.

    Served, it runs on the event loop's thread pool with connections of its own; a test
    that captures on_commit callbacks inside its transaction needs it on its own thread
    (a thread-sensitive call from the test client's sync thread runs back on it).
    """
    from asgiref.sync import sync_to_async

    from apps.wecomapp import views

    monkeypatch.setattr(views, "_callback_in_pool", sync_to_async(views.callback_sync))

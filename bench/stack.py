"""The product's own processes on loopback, against a database and Redis DBs of their own.

`BenchStack` runs the real ASGI server (and, when asked, the real inference worker) the way
`make run` does, but on the `wecom_ai_bench` database and Redis DBs 12-15, so a benchmark
never touches development or test data. It also sets up Django in the calling process, on
the same database, so a benchmark can read the turns it caused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

import httpx

from wecom_ai import embedded, queues

BASE_DIR = Path(__file__).resolve().parent.parent

BENCH_DATABASE = "wecom_ai_bench"
# Settings use REDIS_DB_BASE + 0..3 (broker, results, cache, channel layer); development
# uses 0-3 and tests 8-11.
REDIS_DB_BASE = 12
REDIS_DB_COUNT = 4
BOT_SLUG = "bench"
BOT_NAME = "bench"
PROFILE_NAME = "bench"
# Fixed so a failed run can be replayed by hand against the same bot.
BOT_TOKEN = "ns86UtBL5qySnBgSIvvxqk5PEYWfn4Oc"
BOT_ENCODING_AES_KEY = "49y5NFayhZgizZa53croxteGBySO1lV7UpaD6ZEGvec"
SYSTEM_PROMPT = "You are a helpful assistant in a company chat. Answer clearly."
READY_TIMEOUT_SECONDS = 90.0
STOP_GRACE_SECONDS = 20.0
LOG_DIR_NAME = "bench-logs"


@dataclass(frozen=True)
class BenchBot:
    """What WeCom knows about the bench bot: enough to build a simulator."""

    slug: str
    name: str
    token: str
    encoding_aes_key: str


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class BenchStackError(RuntimeError):
    """A stack process failed to start; the message carries the end of its log."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_database(url: str, name: str) -> str:
    """The same server and credentials as url, another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _ensure_database(cluster_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(cluster_url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not found:
            conn.execute(f'CREATE DATABASE "{name}"')


def _redis_flush(redis_url: str) -> None:
    import redis

    for db in range(REDIS_DB_BASE, REDIS_DB_BASE + REDIS_DB_COUNT):
        client = redis.Redis.from_url(f"{redis_url}/{db}")
        try:
            client.flushdb()
        finally:
            client.close()


def _model_defaults(model: Any, *, skip: set[str]) -> dict[str, Any]:
    """Every editable field at its model default, so a re-run resets earlier bench edits."""
    return {
        field.attname: field.get_default()
        for field in model._meta.concrete_fields
        if not field.primary_key
        and not field.is_relation
        and field.name not in skip
        and not getattr(field, "auto_now", False)
        and not getattr(field, "auto_now_add", False)
    }


class BenchStack:
    """Context manager: bench database and Redis, bench bot, ASGI server, optional worker.

    `env` is added to the server's and worker's environment (after the bench defaults);
    `profile_fields` / `bot_fields` override the bench ModelProfile and Bot values;
    `web_args` go to the uvicorn command line.
    """

    def __init__(
        self,
        *,
        with_inference_worker: bool,
        env: dict[str, str] | None = None,
        profile_fields: dict[str, Any] | None = None,
        bot_fields: dict[str, Any] | None = None,
        inference_pool: tuple[str, int] = ("prefork", 1),
        web_args: tuple[str, ...] = (),
    ) -> None:
        self.with_inference_worker = with_inference_worker
        self.web_args = web_args  # added to the uvicorn command line (`--workers 2`)
        self.inference_pool = inference_pool  # (pool, concurrency) of the inference worker
        self.extra_env = dict(env or {})
        self.profile_fields = dict(profile_fields or {})
        self.bot_fields = dict(bot_fields or {})
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_dir = embedded.data_dir() / LOG_DIR_NAME
        self.database_url = ""
        self.redis_url = ""
        self.bot = BenchBot(
            slug=BOT_SLUG, name=BOT_NAME, token=BOT_TOKEN, encoding_aes_key=BOT_ENCODING_AES_KEY
        )
        self.callback_url = ""
        self._children: list[_Child] = []
        self._previous_sigterm: Any = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _start(self) -> None:
        # Settings only read the environment: the development secrets come from here too.
        os.environ.update(embedded.development_secrets(os.environ))
        cluster_url = os.environ.get("DATABASE_URL") or embedded.postgres_url(embedded.OWNER_ROLE)
        redis_url = (os.environ.get("REDIS_URL") or embedded.redis_url()).rstrip("/")
        if redis_url.rsplit("/", 1)[-1].isdigit():
            redis_url = redis_url.rsplit("/", 1)[0]
        if _database_name(cluster_url) == BENCH_DATABASE:
            raise BenchStackError(f"DATABASE_URL must name another database than {BENCH_DATABASE}")
        _ensure_database(cluster_url, BENCH_DATABASE)
        self.database_url = _with_database(cluster_url, BENCH_DATABASE)
        self.redis_url = redis_url
        _redis_flush(redis_url)
        self.log_dir.mkdir(parents=True, exist_ok=True)

        env = self._child_env()
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=BASE_DIR,
            env=env,
            check=True,
        )
        self._django_setup()
        self._rows_ensure()

        web = self._spawn(
            "web",
            [
                sys.executable, "-m", "uvicorn", "wecom_ai.asgi:application",
                "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log",
                *self.web_args,
            ],
            env,
        )  # fmt: skip
        worker = None
        if self.with_inference_worker:
            worker = self._spawn(
                "inference",
                [
                    sys.executable, "-m", "celery", "-A", "wecom_ai", "worker",
                    "-Q", queues.INFERENCE, "-c", str(self.inference_pool[1]),
                    "-P", self.inference_pool[0],
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                    "-n", f"bench-{os.getpid()}@%h", "--loglevel", "INFO",
                ],
                env,
            )  # fmt: skip
        self._wait_http_ready(web)
        if worker is not None:
            self._wait_log_ready(worker, " ready.")

    def _stop(self) -> None:
        for child in reversed(self._children):
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in reversed(self._children):
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        self._children.clear()
        if self.redis_url:
            with contextlib.suppress(Exception):
                _redis_flush(self.redis_url)
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        embedded.stop_started_here()
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    # -- pieces ----------------------------------------------------------------------------

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "wecom_ai.settings",
                "DJANGO_ENV": "development",
                "DEBUG": "false",
                "CONN_MAX_AGE": "60",
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "REDIS_DB_BASE": str(REDIS_DB_BASE),
                "PUBLIC_BASE_URL": self.base_url,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def _django_setup(self) -> None:
        """Point this process's Django at the bench database, before anything imports settings."""
        for key in ("DJANGO_ENV", "DATABASE_URL", "REDIS_URL", "REDIS_DB_BASE"):
            os.environ[key] = self._child_env()[key]
        os.environ["DJANGO_SETTINGS_MODULE"] = "wecom_ai.settings"
        import django
        from django.conf import settings

        django.setup()
        name = settings.DATABASES["default"]["NAME"]
        if name != BENCH_DATABASE or settings.REDIS_DB_BASE != REDIS_DB_BASE:
            raise BenchStackError(
                f"Django was configured before BenchStack (database {name!r}); "
                "start the stack before importing settings"
            )

    def _rows_ensure(self) -> None:
        from django.conf import settings

        from apps.bots.models import Bot, Conversation
        from apps.inference.models import ModelProfile

        profile_values = _model_defaults(ModelProfile, skip={"name"})
        profile_values.update(gguf_path=settings.DEFAULT_MODEL_PATH, temperature=0.0)
        profile_values.update(self.profile_fields)
        profile, _created = ModelProfile.objects.update_or_create(
            name=PROFILE_NAME, defaults=profile_values
        )
        bot_values = _model_defaults(Bot, skip={"slug"})
        bot_values.update(
            name=BOT_NAME,
            token=BOT_TOKEN,
            encoding_aes_key=BOT_ENCODING_AES_KEY,
            model_profile_id=profile.pk,
            system_prompt=SYSTEM_PROMPT,
            max_tokens=128,
            context_turns=0,
            rate_limit_per_minute=0,
            enabled=True,
        )
        bot_values.update(self.bot_fields)
        bot, _created = Bot.objects.update_or_create(slug=BOT_SLUG, defaults=bot_values)
        # Earlier runs' turns only slow the inserts down; each run starts empty.
        Conversation.objects.filter(bot=bot).delete()
        self.callback_url = self.base_url + bot.callback_path()

    def _spawn(self, name: str, command: list[str], env: dict[str, str]) -> _Child:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=BASE_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = _Child(name, process, log_path)
        self._children.append(child)
        return child

    def _check_alive(self, child: _Child) -> None:
        if child.process.poll() is not None:
            raise BenchStackError(
                f"{child.name} exited with {child.process.returncode}; "
                f"log {child.log_path}:\n{child.log_tail()}"
            )

    def _wait_http_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                self._check_alive(child)
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.base_url}/healthz").status_code == 200:
                        return
                time.sleep(0.2)
        raise BenchStackError(f"{child.name} not ready; log {child.log_path}:\n{child.log_tail()}")

    def _wait_log_ready(self, child: _Child, marker: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            self._check_alive(child)
            if marker in child.log_path.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise BenchStackError(f"{child.name} not ready; log {child.log_path}:\n{child.log_tail()}")

    # -- for benchmarks -----------------------------------------------------------------------

    def simulator(self, **kwargs: Any) -> Any:
        """A WeComSimulator for the bench bot (keyword arguments go to its constructor)."""
        from wecom.simulator import WeComSimulator

        return WeComSimulator(
            callback_url=self.callback_url,
            token=self.bot.token,
            encoding_aes_key=self.bot.encoding_aes_key,
            bot_name=self.bot.name,
            **kwargs,
        )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM unwinds like Ctrl-C, so the `with` block still stops every child.
    raise KeyboardInterrupt

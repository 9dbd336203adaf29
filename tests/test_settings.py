"""Production refuses insecure configuration; a correct one passes `check --deploy` cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings

BASE_DIR = Path(__file__).resolve().parent.parent

# Every test runs `manage.py` in a child process.
pytestmark = pytest.mark.slow


def _production_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "PYTEST_VERSION"}}
    env.update(
        {
            "DJANGO_ENV": "production",
            "SECRET_KEY": "k7$" + "x9Qp2vLr8Zt4Wm6Ns1Yb3Hc5Jd7Fg0Ke" * 2,
            "FIELD_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "AUDIT_LEDGER_KEY": "ledger-anchor-key-" + "Qw8Er5Ty2Ui7" * 3,
            "ALLOWED_HOSTS": "ai.example.com",
            "PUBLIC_BASE_URL": "https://ai.example.com",
            "DATABASE_URL": "postgres://u:p@127.0.0.1:5432/wecom_ai",
            "REDIS_URL": django_settings.REDIS_URL,
        }
    )
    env.update(overrides)
    return {k: v for k, v in env.items() if v != ""}


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_secure_production_configuration_passes_check_deploy():
    result = _manage(_production_env(), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"DEBUG": "true"}, "DEBUG"),
        ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS"),
        ({"FIELD_ENCRYPTION_KEYS": ""}, "FIELD_ENCRYPTION_KEYS"),
        ({"SESSION_COOKIE_SECURE": "false"}, "SESSION_COOKIE_SECURE"),
        ({"PUBLIC_BASE_URL": "http://ai.example.com"}, "https"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"AUDIT_LEDGER_KEY": ""}, "AUDIT_LEDGER_KEY"),
        ({"REDIS_URL": "redis://127.0.0.1:6379"}, "Redis must require a password"),
    ],
)
def test_production_refuses_insecure_settings(override, complaint):
    result = _manage(_production_env(**override), "check")
    assert result.returncode != 0
    assert "Refusing to start in production" in result.stderr
    assert complaint in result.stderr


def test_secret_from_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-" + "A1b2C3d4E5f6G7h8J9k0" * 3)
    result = _manage(
        _production_env(SECRET_KEY="", SECRET_KEY_FILE=str(secret)), "check", "--deploy"
    )
    assert result.returncode == 0, result.stderr


def test_malformed_encryption_key_is_refused():
    result = _manage(_production_env(FIELD_ENCRYPTION_KEYS="not-a-key"), "check")
    assert result.returncode != 0
    assert "Fernet" in result.stderr

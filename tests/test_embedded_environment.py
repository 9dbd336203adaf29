"""What the embedded wrapper puts into the environment settings read (no server started:
every test names its database and Redis)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from wecom_ai import embedded

GIVEN = {
    "DATABASE_URL": "postgres://app:secret@127.0.0.1:9/wecom_ai",
    "REDIS_URL": "redis://:secret@127.0.0.1:9",
}


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data"
    monkeypatch.setenv("WECOM_AI_DATA", str(path))
    return path


def test_development_secrets_are_generated_once_into_the_data_directory(data: Path) -> None:
    first = embedded.environment({"DJANGO_ENV": "development", **GIVEN})
    second = embedded.environment({"DJANGO_ENV": "development", **GIVEN})

    assert first == second
    Fernet(first["FIELD_ENCRYPTION_KEYS"])
    assert len(first["SECRET_KEY"]) >= 50 and len(first["AUDIT_LEDGER_KEY"]) >= 32
    for file_name in ("secret_key", "field_encryption_key", "ledger_key"):
        assert stat.S_IMODE((data / file_name).stat().st_mode) == 0o600
    assert (data / "secret_key").read_text() == first["SECRET_KEY"]


def test_given_values_win_and_name_file_counts_as_given(data: Path, tmp_path: Path) -> None:
    env = embedded.environment(
        {
            "DJANGO_ENV": "test",
            **GIVEN,
            "SECRET_KEY": "given",
            "FIELD_ENCRYPTION_KEYS_FILE": str(tmp_path / "keys"),
        }
    )

    assert env["SECRET_KEY"] == "given"
    assert "FIELD_ENCRYPTION_KEYS" not in env
    assert env["AUDIT_LEDGER_KEY"]
    assert {key: env[key] for key in GIVEN} == GIVEN
    # An external database is no embedded one: the test run does not switch roles on it
    assert "WECOM_AI_EMBEDDED_DATABASE" not in env and "WECOM_AI_EMBEDDED_REDIS" not in env
    assert not (data / "secret_key").exists()


def test_production_is_left_as_configured(data: Path) -> None:
    base = {"DJANGO_ENV": "production"}

    assert embedded.environment(base) == base
    assert embedded.development_secrets(base) == {}
    assert not data.exists()

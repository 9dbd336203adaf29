"""Issue 9, items 6 and 7: the app's database role cannot rewrite the ledger, and nothing
read back from Redis can run code.

Tests run as the app role (tests/conftest.py creates the test database as the owner, then
reconnects as `DATABASE_APP_ROLE`), so what they show is what web and workers can do.
"""

from __future__ import annotations

import pickle
import stat
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection, transaction

from apps.audit.models import LedgerEntry
from apps.audit.services.ledger import ledger_append, ledger_verify
from wecom_ai import embedded
from wecom_ai.cache_json import JSONSerializer

pytestmark = pytest.mark.django_db

LEDGER_TABLES = ("audit_ledgerentry", "audit_ledgercheckpoint")


def _embedded_only() -> None:
    if not settings.EMBEDDED_DATABASE:
        pytest.skip("checks the embedded server's roles; DATABASE_URL points elsewhere")


# --- item 6: the app's database role ---------------------------------------------------------


def test_app_connects_as_a_role_that_is_neither_superuser_nor_ledger_owner() -> None:
    _embedded_only()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls "
            "FROM pg_roles WHERE rolname = current_user"
        )
        user, superuser, createrole, createdb, bypassrls = cursor.fetchone()
        cursor.execute(
            "SELECT tablename, tableowner FROM pg_tables WHERE tablename = ANY(%s)",
            [list(LEDGER_TABLES)],
        )
        owners = dict(cursor.fetchall())
    assert user == settings.DATABASE_APP_ROLE
    assert (superuser, createrole, createdb, bypassrls) == (False, False, False, False)
    assert set(owners) == set(LEDGER_TABLES)
    assert user not in owners.values()


@pytest.mark.parametrize("table", LEDGER_TABLES)
def test_app_role_may_only_insert_and_select_on_the_ledger(table: str) -> None:
    _embedded_only()
    privileges = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "TRIGGER", "REFERENCES")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p FROM unnest(%s::text[]) AS p WHERE has_table_privilege(current_user, %s, p)",
            [list(privileges), table],
        )
        held = {row[0] for row in cursor.fetchall()}
    assert held == {"SELECT", "INSERT"}


@pytest.mark.parametrize(
    "statement",
    [
        # What worked for an app connected as a superuser owning the tables:
        "SET session_replication_role = replica",
        "ALTER TABLE audit_ledgerentry DISABLE TRIGGER USER",
        "ALTER TABLE audit_ledgerentry DISABLE TRIGGER ALL",
        "UPDATE audit_ledgerentry SET ref = 'bots.turn:999'",
        "DELETE FROM audit_ledgerentry",
        "TRUNCATE audit_ledgerentry",
        "UPDATE audit_ledgercheckpoint SET head_hash = 'x'",
        "DROP TRIGGER audit_ledgerentry_no_update_delete ON audit_ledgerentry",
        "ALTER TABLE audit_ledgerentry OWNER TO CURRENT_USER",
        "ALTER ROLE CURRENT_USER SUPERUSER",
    ],
)
def test_app_role_cannot_switch_off_or_go_around_the_append_only_ledger(statement: str) -> None:
    _embedded_only()
    # Given a ledger with an entry
    ledger_append(kind=LedgerEntry.Kind.TURN, ref="bots.turn:1", payload={"turn": 1})
    # When the app's own connection tries to disable the triggers or rewrite history
    with (
        pytest.raises(DatabaseError, match=r"permission denied|must be owner|append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement)
    # Then the ledger is untouched and still verifies
    assert list(LedgerEntry.objects.values_list("ref", flat=True)) == ["bots.turn:1"]
    assert ledger_verify().ok


def test_app_role_cannot_grant_itself_more_on_the_ledger() -> None:
    _embedded_only()
    with connection.cursor() as cursor:
        # A non-owner's GRANT grants nothing (PostgreSQL only warns).
        cursor.execute("GRANT UPDATE, DELETE ON audit_ledgerentry TO CURRENT_USER")
        cursor.execute("SELECT has_table_privilege(current_user, 'audit_ledgerentry', 'UPDATE')")
        assert cursor.fetchone()[0] is False


def test_embedded_server_refuses_logins_without_the_roles_password() -> None:
    import psycopg

    _embedded_only()
    # Given the URL the app uses, with another role's name and a wrong password
    parts = urlsplit(embedded.postgres_url(embedded.APP_ROLE))
    host = parts.netloc.rsplit("@", 1)[1]
    for role in (embedded.SUPERUSER, embedded.OWNER_ROLE, embedded.APP_ROLE):
        forged = urlunsplit(parts._replace(netloc=f"{role}:not-the-password@{host}"))
        # Then the server asks for the password instead of trusting the socket
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(forged).close()


def test_anchor_key_is_not_in_the_database_the_app_role_can_write() -> None:
    # The key that makes a rewrite detectable is deployment configuration: nothing the app
    # role can UPDATE holds it, so a compromised app cannot re-key a rewritten chain.
    assert settings.AUDIT_LEDGER_KEY
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name ILIKE '%%ledger_key%%'"
        )
        assert cursor.fetchone()[0] == 0


# --- item 7: Redis -----------------------------------------------------------------------


class _Planted:
    """A pickle that, when loaded, creates a file: code execution through the cache."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_cache_never_unpickles_a_value_planted_in_redis(tmp_path: Path) -> None:
    # Given someone who can write to Redis plants a pickle under a stream-state key
    marker = tmp_path / "pwned"
    key = cache.make_and_validate_key("stream:planted")
    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    client.set(key, pickle.dumps(_Planted(marker)))
    # When the web process reads that key back
    with pytest.raises(ValueError):
        cache.get("stream:planted")
    # Then nothing ran
    assert not marker.exists()


def test_cache_keeps_json_values_and_atomic_counters() -> None:
    cache.set("state", {"content": "答", "finish": False, "deadline": 1.5})
    assert cache.get("state") == {"content": "答", "finish": False, "deadline": 1.5}
    cache.add("counter", 0)
    assert cache.incr("counter") == 1
    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    raw = client.get(cache.make_and_validate_key("state"))
    assert raw.startswith(b"{")  # JSON on the wire, not a pickle
    with pytest.raises(TypeError):
        JSONSerializer().dumps(object())  # what JSON cannot hold is refused when written


def test_celery_and_channels_never_use_pickle() -> None:
    from channels.layers import get_channel_layer

    from wecom_ai.celery import app

    assert app.conf.task_serializer == "json"
    assert app.conf.result_serializer == "json"
    assert list(app.conf.accept_content) == ["json"]
    assert list(app.conf.result_accept_content) == ["json"]
    layer = get_channel_layer()
    assert "pickle" not in type(layer._serializer).__name__.lower()


def test_embedded_redis_requires_a_password_and_keeps_its_data_private() -> None:
    if not settings.EMBEDDED_REDIS:
        pytest.skip("checks the embedded Redis; REDIS_URL points elsewhere")
    url = redis.connection.parse_url(settings.REDIS_URL)
    # Without the password Redis refuses every command
    anonymous = redis.Redis(host=url["host"], port=url["port"])
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("planted", b"x")
    # With it, it answers
    assert redis.Redis.from_url(settings.REDIS_URL).ping()
    # And its data directory (AOF, config with the password) is private to its user
    directory = Path(settings.DATA_DIR) / "redis"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_make_run_gives_the_owner_url_to_migrate_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from wecom_ai import runner

    _embedded_only()
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_OWNER_URL", raising=False)
    migrate_env, env = runner.environments({"PATH": "/usr/bin"})
    assert urlsplit(migrate_env["DATABASE_URL"]).username == embedded.OWNER_ROLE
    assert urlsplit(env["DATABASE_URL"]).username == embedded.APP_ROLE
    assert migrate_env["DATABASE_APP_ROLE"] == embedded.APP_ROLE
    assert "DATABASE_OWNER_URL" not in env
    assert embedded.OWNER_ROLE not in str(env)

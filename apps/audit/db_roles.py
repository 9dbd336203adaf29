"""What the application's database role may do, granted whenever migrations run.

Migrations run as the owner of the tables; web, workers and beat connect as
`DATABASE_APP_ROLE`, which is neither a superuser nor an owner. An owner (or superuser) can
switch the ledger's append-only triggers off (`ALTER TABLE … DISABLE TRIGGER`,
`session_replication_role`); the app role cannot, and on the ledger it holds only INSERT
and SELECT. Granting after every `migrate` keeps new tables covered without a manual step.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg import sql

logger = logging.getLogger(__name__)

LEDGER_TABLES = ("audit_ledgerentry", "audit_ledgercheckpoint")


def app_role_grant(*, role: str, using: str = DEFAULT_DB_ALIAS) -> bool:
    """Grant `role` read/write on the app's tables but only INSERT/SELECT on the ledger.

    Runs as the migrating (owner) connection. Returns False, granting nothing, when that
    connection is the app role itself (then it owns nothing it could grant).
    """
    connection = connections[using]
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", [role]
        )
        current, exists = cursor.fetchone()
        if not exists:
            raise ImproperlyConfigured(f"DATABASE_APP_ROLE {role!r} does not exist")
        if current == role:
            logger.warning("migrate ran as the app role %s: no privileges granted", role)
            return False
        who = sql.Identifier(role)
        ledger = sql.SQL(", ").join(sql.Identifier(table) for table in LEDGER_TABLES)
        statements = [
            sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(who),
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
            ).format(who),
            sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(who),
            # History is append-only for the app: no UPDATE, DELETE, TRUNCATE, TRIGGER.
            sql.SQL("REVOKE ALL ON {} FROM PUBLIC, {}").format(ledger, who),
            sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(ledger, who),
            # The migration history is the owner's to write.
            sql.SQL("REVOKE INSERT, UPDATE, DELETE ON django_migrations FROM {}").format(who),
        ]
        cursor.execute("SELECT to_regclass('knowledge_chunk') IS NOT NULL")
        if connection.pg_version >= 170000 and cursor.fetchone()[0]:
            # Vacuuming the passage table after large deletions (knowledge.services.maintenance).
            statements.append(sql.SQL("GRANT MAINTAIN ON knowledge_chunk TO {}").format(who))
        for statement in statements:
            cursor.execute(statement)
    return True


def post_migrate_grant(using: str = DEFAULT_DB_ALIAS, **_kwargs: Any) -> None:
    """post_migrate receiver (connected once, for the audit app)."""
    role = getattr(settings, "DATABASE_APP_ROLE", "")
    if role:
        app_role_grant(role=role, using=using)

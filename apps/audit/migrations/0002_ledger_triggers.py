"""Make the ledger and its checkpoints append-only inside PostgreSQL.

Statement-level triggers refuse every UPDATE and DELETE, whoever runs it; only a superuser
or the table owner can get around them, and only by visibly disabling the triggers. TRUNCATE
is refused while the table holds rows: truncating an empty table destroys nothing, and the
test runner's flush between transactional tests truncates every table.
"""

from django.db import migrations

TABLES = ("audit_ledgerentry", "audit_ledgercheckpoint")

FUNCTIONS = """
CREATE FUNCTION audit_append_only_reject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING HINT = 'The audit ledger is a hash chain; record corrections as new entries.';
END;
$$;

CREATE FUNCTION audit_append_only_reject_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    has_rows boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I)', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        INTO has_rows;
    IF has_rows THEN
        RAISE EXCEPTION '% is append-only: TRUNCATE is not allowed', TG_TABLE_NAME
            USING HINT = 'The audit ledger is a hash chain; it is never emptied.';
    END IF;
    RETURN NULL;
END;
$$;
"""

TRIGGERS = """
CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only_reject();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only_reject_truncate();
"""

DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS {table}_no_update_delete ON {table};
DROP TRIGGER IF EXISTS {table}_no_truncate ON {table};
"""

DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS audit_append_only_reject();
DROP FUNCTION IF EXISTS audit_append_only_reject_truncate();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_policies_ledger_review")]

    operations = [
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
        *(
            migrations.RunSQL(TRIGGERS.format(table=table), DROP_TRIGGERS.format(table=table))
            for table in TABLES
        ),
    ]

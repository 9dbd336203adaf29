"""The ledger gets its anchor MACs (HMAC under AUDIT_LEDGER_KEY, kept outside the
database), so a chain rewritten with full database access no longer verifies.

Entries written before this migration get their MAC here: it runs as the tables' owner,
which may switch the append-only triggers off for this one backfill.
"""

import hashlib
import hmac
import json

from django.conf import settings
from django.db import migrations, models


def _key() -> bytes:
    return hmac.new(
        settings.AUDIT_LEDGER_KEY.encode(), b"apps.audit.ledger-anchor", hashlib.sha256
    ).digest()


def macs_backfill(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM audit_ledgerentry)")
        has_entries = cursor.fetchone()[0]
        cursor.execute("SELECT EXISTS (SELECT 1 FROM audit_ledgercheckpoint)")
        has_checkpoints = cursor.fetchone()[0]
        if not (has_entries or has_checkpoints):
            return
        key = _key()
        for table in ("audit_ledgerentry", "audit_ledgercheckpoint"):
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        cursor.execute("SELECT id, entry_hash FROM audit_ledgerentry")
        for pk, entry_hash in cursor.fetchall():
            mac = hmac.new(key, f"entry:{entry_hash}".encode(), hashlib.sha256).hexdigest()
            cursor.execute("UPDATE audit_ledgerentry SET entry_mac = %s WHERE id = %s", [mac, pk])
        cursor.execute("SELECT id, day, seq, head_hash FROM audit_ledgercheckpoint")
        for pk, day, seq, head_hash in cursor.fetchall():
            body = {"day": day.isoformat(), "seq": seq, "head_hash": head_hash}
            message = b"checkpoint:" + json.dumps(
                body, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
            mac = hmac.new(key, message, hashlib.sha256).hexdigest()
            cursor.execute("UPDATE audit_ledgercheckpoint SET mac = %s WHERE id = %s", [mac, pk])
        for table in ("audit_ledgerentry", "audit_ledgercheckpoint"):
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0006_archive_sdk_from_deployment'),
    ]

    operations = [
        migrations.AddField(
            model_name='ledgercheckpoint',
            name='mac',
            field=models.CharField(blank=True, default='', max_length=64, verbose_name='anchor MAC'),
        ),
        migrations.AddField(
            model_name='ledgerentry',
            name='entry_mac',
            field=models.CharField(blank=True, default='', max_length=64, verbose_name='anchor MAC'),
        ),
        migrations.RunPython(macs_backfill, migrations.RunPython.noop),
    ]

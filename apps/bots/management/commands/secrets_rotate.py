"""Re-encrypt every stored secret with the newest key in FIELD_ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from apps.core.fields import EncryptedTextField, secret_rotate


class Command(BaseCommand):
    help = "Re-encrypt stored secrets with the first FIELD_ENCRYPTION_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        total = 0
        with transaction.atomic():
            for model in apps.get_models():
                fields = [
                    f for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)
                ]
                if not fields:
                    continue
                table = connection.ops.quote_name(model._meta.db_table)
                pk = connection.ops.quote_name(model._meta.pk.column)
                columns = [connection.ops.quote_name(f.column) for f in fields]
                with connection.cursor() as cursor:
                    cursor.execute(f"SELECT {pk}, {', '.join(columns)} FROM {table} FOR UPDATE")  # noqa: S608
                    rows = cursor.fetchall()
                    for row in rows:
                        values = [secret_rotate(v) if v else v for v in row[1:]]
                        assignments = ", ".join(f"{c} = %s" for c in columns)
                        cursor.execute(
                            f"UPDATE {table} SET {assignments} WHERE {pk} = %s",  # noqa: S608
                            [*values, row[0]],
                        )
                        total += 1
        self.stdout.write(f"re-encrypted {total} rows")

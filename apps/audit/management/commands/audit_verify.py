"""Recompute the ledger's hash chain: exit 0 with the count and head, or 1 at the first break."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.audit.services.ledger import ledger_verify


class Command(BaseCommand):
    help = "Verify the audit ledger hash chain and its daily checkpoints."

    def handle(self, *args: Any, **options: Any) -> None:
        result = ledger_verify()
        if not result.ok:
            raise CommandError(
                f"ledger BROKEN at entry #{result.broken_seq}: {result.problem} "
                f"({result.count} entries verified before it)",
                returncode=1,
            )
        self.stdout.write(
            f"ledger OK: {result.count} entries, head #{result.head_seq} {result.head_hash}"
        )

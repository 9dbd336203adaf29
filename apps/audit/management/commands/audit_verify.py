"""Recompute the ledger's hash chain and anchors: exit 0 with the count and head, or 1 at
the first break."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.services.ledger import ledger_verify


class Command(BaseCommand):
    help = (
        "Verify the audit ledger: hash chain, anchor MACs (AUDIT_LEDGER_KEY), the daily "
        "checkpoints and the exported anchor file."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--anchors",
            metavar="FILE",
            help="Anchor file to check against (default AUDIT_LEDGER_ANCHOR_FILE), e.g. a "
            "copy fetched from WORM storage.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        anchor_file = options.get("anchors") or settings.AUDIT_LEDGER_ANCHOR_FILE
        result = ledger_verify(anchor_file=anchor_file)
        if not result.ok:
            where = f"at entry #{result.broken_seq}: " if result.broken_seq else ": "
            raise CommandError(
                f"ledger BROKEN {where}{result.problem} "
                f"({result.count} entries verified before it)",
                returncode=1,
            )
        self.stdout.write(
            f"ledger OK: {result.count} entries, head #{result.head_seq} {result.head_hash}; "
            f"{result.anchors} exported anchors checked ({anchor_file})"
        )

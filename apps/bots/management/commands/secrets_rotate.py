"""Re-encrypt every stored secret with the newest key in FIELD_ENCRYPTION_KEYS."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.services.operator_audit import command_actor
from apps.bots.services.config import secrets_rotate


class Command(BaseCommand):
    help = "Re-encrypt stored secrets with the first FIELD_ENCRYPTION_KEYS key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--actor",
            metavar="USERNAME",
            help="Record the change in the operator audit as this user's "
            "(default: system:secrets_rotate).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            actor = command_actor(command="secrets_rotate", username=options["actor"])
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        total = secrets_rotate(actor=actor)
        self.stdout.write(f"re-encrypted {total} rows")

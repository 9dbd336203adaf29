"""Add or change one employee in the directory by hand (departments and tags decide access)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.services.operator_audit import command_actor
from apps.knowledge.services.config import directory_user_set


class Command(BaseCommand):
    help = (
        "Create or update the directory entry of a WeCom userid. --department and --tag "
        "replace the stored lists when given (repeat them for several)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("userid")
        parser.add_argument("--name")
        parser.add_argument("--department", action="append", dest="departments", metavar="NAME")
        parser.add_argument("--tag", action="append", dest="tags", metavar="TAG")
        parser.add_argument(
            "--actor",
            metavar="USERNAME",
            help="Record the change in the operator audit as this user's "
            "(default: system:directory_user).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            actor = command_actor(command="directory_user", username=options["actor"])
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        user, created = directory_user_set(
            userid=options["userid"],
            actor=actor,
            name=options["name"],
            departments=options["departments"],
            tags=options["tags"],
        )
        verb = "created" if created else "updated"
        departments = ", ".join(user.departments) or "no departments"
        self.stdout.write(f"{verb} {user} · {departments}")

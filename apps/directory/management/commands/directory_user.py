"""Add or change one employee in the directory by hand (departments and tags decide access)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.directory.services import directory_user_save


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

    def handle(self, *args: Any, **options: Any) -> None:
        user, created = directory_user_save(
            userid=options["userid"],
            name=options["name"],
            departments=options["departments"],
            tags=options["tags"],
        )
        verb = "created" if created else "updated"
        departments = ", ".join(user.departments) or "no departments"
        self.stdout.write(f"{verb} {user} · {departments}")

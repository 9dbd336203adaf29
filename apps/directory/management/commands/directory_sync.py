"""Mirror WeCom's contact directory into the employee directory used for audiences."""

from __future__ import annotations

from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.directory.services import directory_sync
from wecom.contacts import WeComApiError


class Command(BaseCommand):
    help = (
        "Fetch departments and members from WeCom's contact API (WECOM_API_BASE, with "
        "WECOM_CORP_ID and WECOM_CONTACT_SECRET) and update the directory. People no longer "
        "in WeCom are removed unless --keep-missing is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--keep-missing", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            result = directory_sync(prune=not options["keep_missing"])
        except (WeComApiError, httpx.HTTPError) as exc:
            raise CommandError(f"directory sync failed: {exc}") from exc
        self.stdout.write(
            f"{result.departments} departments · {result.created} people added · "
            f"{result.updated} changed · {result.removed} removed"
        )

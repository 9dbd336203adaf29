from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from apps.monitoring.services.rollup import rollup_refresh


class Command(BaseCommand):
    help = (
        "Recompute the dashboard's hourly summaries for the last DAYS days (beat keeps the "
        "last two hours current; run this after an upgrade to fill the history)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=30)

    def handle(self, *args: Any, days: int, **options: Any) -> None:
        now = timezone.now()
        written = 0
        # A day per statement keeps each transaction short on a large table.
        for day in range(days, 0, -1):
            written += rollup_refresh(
                since=now - timedelta(days=day), until=now - timedelta(days=day - 1)
            )
        self.stdout.write(f"{written} hourly summaries written")

"""Export review cases, archived messages or bot turns as JSONL (cases also CSV or XLSX)
with a manifest."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet
from django.utils.dateparse import parse_date

from apps.audit import selectors
from apps.audit.registry import bot_side_get
from apps.audit.services.export import EXPORTERS, FORMATS, TABLES, export_write


def _day(value: str) -> dt.date:
    day = parse_date(value)
    if day is None:
        raise CommandError(f"{value!r} is not a date (YYYY-MM-DD)")
    return day


class Command(BaseCommand):
    help = (
        "Export records as JSONL plus manifest.json (SHA-256 per file, ledger head). "
        "Records are limited to what --user may see, and each one is access-logged."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kind", choices=sorted(EXPORTERS))
        parser.add_argument("--out", required=True, type=Path, help="Directory to write into.")
        parser.add_argument("--user", required=True, help="Username the export is made for.")
        parser.add_argument("--reason", required=True, help="Why; goes to the access log.")
        parser.add_argument("--since", type=_day, help="From this day (inclusive).")
        parser.add_argument("--until", type=_day, help="Up to this day (inclusive).")
        parser.add_argument("--bot", help="Bot slug (cases, turns).")
        parser.add_argument("--source", help="Archive source name (cases, messages).")
        parser.add_argument(
            "--format", choices=FORMATS, default="jsonl", help="csv and xlsx: cases only."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"no user {options['user']!r}")
        if len(options["reason"].strip()) < 5:
            raise CommandError("give a reason of at least 5 characters")
        if options["format"] != "jsonl" and options["kind"] not in TABLES:
            raise CommandError(f"{options['kind']} export only as jsonl")
        queryset = self._selection(options["kind"], user, options)
        out: Path = options["out"]
        if out.exists() and any(out.iterdir()):
            raise CommandError(f"{out} is not empty")
        filters = {
            key: str(options[key])
            for key in ("since", "until", "bot", "source")
            if options.get(key) is not None
        }
        result = export_write(
            kind=options["kind"],
            queryset=queryset,
            user=user,
            reason=options["reason"],
            directory=out,
            filters=filters,
            fmt=options["format"],
        )
        self.stdout.write(
            f"exported {result.records} records to {out} "
            f"(ledger head #{result.manifest['ledger']['head_seq']})"
        )

    def _selection(self, kind: str, user: Any, options: dict[str, Any]) -> QuerySet:
        since, until = options.get("since"), options.get("until")
        if kind == "cases":
            queryset = selectors.review_cases_for_user(user=user)
            time_field = "created_at"
            if options.get("bot"):
                queryset = queryset.filter(bot__slug=options["bot"])
            if options.get("source"):
                queryset = queryset.filter(archive_source__name=options["source"])
        elif kind == "messages":
            queryset = selectors.archived_messages_for_user(user=user)
            time_field = "msgtime"
            if options.get("source"):
                queryset = queryset.filter(source__name=options["source"])
        else:
            queryset = bot_side_get().turns_for_user(user=user)
            time_field = "received_at"
            if options.get("bot"):
                queryset = queryset.filter(bot__slug=options["bot"])
        if since:
            queryset = queryset.filter(**{f"{time_field}__date__gte": since})
        if until:
            queryset = queryset.filter(**{f"{time_field}__date__lte": until})
        return queryset

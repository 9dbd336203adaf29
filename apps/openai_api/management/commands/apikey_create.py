"""Create an API key for the OpenAI-compatible API; the key is printed once, never stored."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit.services.operator_audit import command_actor
from apps.bots.models import Bot
from apps.openai_api.models import ApiKey
from apps.openai_api.services.keys import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a bot and print it (shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("bot_slug", help="The bot the key may use (more with --bot).")
        parser.add_argument("name", help="What the key is for, e.g. 'wechaty group bot'.")
        parser.add_argument(
            "--bot", action="append", default=[], metavar="SLUG", help="Another bot it may use."
        )
        parser.add_argument(
            "--userid",
            default="",
            help="Act as this directory employee (default: an external user).",
        )
        parser.add_argument("--rate-limit", type=int, default=60, help="Requests per minute.")
        parser.add_argument(
            "--actor", metavar="USERNAME", help="Record the creation as this user's."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        slugs = [options["bot_slug"], *options["bot"]]
        bots = list(Bot.objects.filter(slug__in=slugs))
        missing = set(slugs) - {bot.slug for bot in bots}
        if missing:
            raise CommandError(f"no bot with slug {', '.join(sorted(missing))}")
        try:
            actor = command_actor(command="apikey_create", username=options["actor"])
            ApiKey(
                name=options["name"],
                userid=options["userid"],
                rate_limit_per_minute=max(0, options["rate_limit"]),
            ).clean()
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        except ValidationError as exc:
            raise CommandError(f"--userid {options['userid']}: {'; '.join(exc.messages)}") from exc
        key, raw = api_key_create(
            name=options["name"],
            bots=bots,
            actor=actor,
            userid=options["userid"],
            rate_limit_per_minute=max(0, options["rate_limit"]),
        )
        self.stderr.write(f"API key {key.name!r} ({key}) created; it is shown only this once:")
        self.stdout.write(raw)

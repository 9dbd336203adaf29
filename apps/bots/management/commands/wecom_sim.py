"""Play WeCom against a running server: one question, streamed to the end, with timings."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from apps.bots.models import Bot
from wecom.simulator import ResponseUrlServer, SimulatorError, WeComSimulator


class Command(BaseCommand):
    help = "Ask a bot a question the way WeCom does and print the streamed answer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="the bot's slug")
        parser.add_argument("text", help='the message, e.g. "@demo hello"')
        parser.add_argument("--user", default="zhangsan", help="WeCom userid of the sender")
        parser.add_argument("--chat", default=None, help="group chat id (omit for a 1:1 chat)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--url", default=settings.PUBLIC_BASE_URL, help="the server's base URL")
        parser.add_argument("--timeout", type=float, default=400.0, help="seconds to wait")

    def handle(self, *args: Any, **options: Any) -> None:
        bot = Bot.objects.filter(slug=options["slug"]).first()
        if bot is None:
            raise CommandError(_("No bot with slug %(slug)s.") % {"slug": options["slug"]})
        callback_url = options["url"].rstrip("/") + bot.callback_path()
        try:
            with (
                ResponseUrlServer() as responses,
                WeComSimulator(
                    callback_url=callback_url,
                    token=bot.token,
                    encoding_aes_key=bot.encoding_aes_key,
                    aibotid=bot.aibotid or "sim-bot",
                    response_server=responses,
                    bot_name=bot.name,
                ) as simulator,
            ):
                result = simulator.ask(
                    options["text"],
                    userid=options["user"],
                    chatid=options["chat"],
                    timeout=options["timeout"],
                    response_wait=5.0,
                )
        except (SimulatorError, OSError) as exc:
            raise CommandError(
                _("The simulated WeCom exchange failed: %(error)s") % {"error": exc}
            ) from exc
        follow_up = None
        if result.response_url_post:
            follow_up = result.response_url_post.get("markdown", {}).get("content")
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "stream_id": result.stream_id,
                        "finished": result.finished,
                        "answer": result.answer,
                        "think": result.think,
                        "response_url_content": follow_up,
                        "ack_seconds": round(result.ack_seconds, 4),
                        "first_content_seconds": None
                        if result.first_content_seconds is None
                        else round(result.first_content_seconds, 4),
                        "total_seconds": round(result.total_seconds, 4),
                        "refreshes": result.refreshes,
                    },
                    ensure_ascii=False,
                )
            )
        else:
            if result.think:
                self.stdout.write(f"<think>{result.think}</think>")
            self.stdout.write(result.answer)
            if follow_up:
                self.stdout.write(follow_up)
            first = (
                "—"
                if result.first_content_seconds is None
                else f"{result.first_content_seconds:.2f}s"
            )
            self.stderr.write(
                _("ack %(ack)s · first content %(first)s · total %(total)s · %(n)d refreshes")
                % {
                    "ack": f"{result.ack_seconds * 1000:.0f}ms",
                    "first": first,
                    "total": f"{result.total_seconds:.2f}s",
                    "n": result.refreshes,
                }
            )
        if not result.finished:
            raise CommandError(_("The stream did not finish within the timeout."))

"""Play WeCom against a running server: one question, streamed to the end, with timings.

A callback-mode bot is asked through its callback URL; a long-connection bot through a
simulated WeCom WebSocket endpoint on loopback that the running connector dials (its
WECOM_LONGCONN_URL, or `longconn_run --url`, must name that address).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from apps.bots.models import Bot
from wecom.simulator import ResponseUrlServer, SimulatorError, WeComSimulator
from wecom.simulator_longconn_thread import LongConnSimulatorThread

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


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
        parser.add_argument(
            "--port",
            type=int,
            default=None,
            help="long connection: the loopback port to serve WeCom's endpoint on "
            "(default: the port of WECOM_LONGCONN_URL when that is ws://127.0.0.1:PORT)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        bot = Bot.objects.filter(slug=options["slug"]).first()
        if bot is None:
            raise CommandError(_("No bot with slug %(slug)s.") % {"slug": options["slug"]})
        if bot.uses_long_connection:
            self._ask_long_connection(bot, options)
            return
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

    def _ask_long_connection(self, bot: Bot, options: dict[str, Any]) -> None:
        port = options["port"] or _loopback_port(settings.WECOM_LONGCONN_URL)
        if port is None:
            raise CommandError(
                _(
                    "The bot uses the long connection: start the connector with "
                    "WECOM_LONGCONN_URL=ws://127.0.0.1:PORT and pass --port PORT."
                )
            )
        try:
            with LongConnSimulatorThread(bots={bot.aibotid: bot.longconn_secret}, port=port) as sim:
                sim.wait_subscribed(bot.aibotid, timeout=min(options["timeout"], 90.0))
                answer = sim.ask(
                    bot.aibotid,
                    options["text"],
                    userid=options["user"],
                    chatid=options["chat"],
                    bot_name=bot.name,
                    timeout=options["timeout"],
                )
        except (TimeoutError, OSError) as exc:
            raise CommandError(
                _("The simulated WeCom exchange failed: %(error)s")
                % {"error": str(exc) or "timeout"}
            ) from exc
        first = answer.first_frame_seconds
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "stream_id": answer.frames[0].frame.body["stream"]["id"]
                        if answer.frames
                        else None,
                        "finished": answer.finished,
                        "answer": answer.content,
                        "feedback_id": answer.feedback_id,
                        "first_frame_seconds": None if first is None else round(first, 4),
                        "total_seconds": round(answer.total_seconds, 4),
                        "frames": len(answer.frames),
                    },
                    ensure_ascii=False,
                )
            )
        else:
            self.stdout.write(answer.content)
            self.stderr.write(
                _("first frame %(first)s · total %(total)s · %(n)d frames")
                % {
                    "first": "—" if first is None else f"{first:.2f}s",
                    "total": f"{answer.total_seconds:.2f}s",
                    "n": len(answer.frames),
                }
            )
        if not answer.finished:
            raise CommandError(_("The stream did not finish within the timeout."))


def _loopback_port(url: str) -> int | None:
    parsed = urlsplit(url)
    if parsed.scheme == "ws" and parsed.hostname in LOOPBACK_HOSTS and parsed.port:
        return parsed.port
    return None

"""Play WeCom against a running server for a self-built app or 微信客服: ask, print the answer.

The running server's (and workers') WECOM_API_BASE must be http://127.0.0.1:PORT: this
command serves WeCom's send API there, posts the encrypted callback, and prints what
`message/send` (or `kf/send_msg`) received once the turn's answer was pushed.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from apps.bots.models import Turn
from apps.wecomapp.models import AppDelivery, WeComApp
from wecom.app import part_number_strip
from wecom.simulator_app import AppApiServer, AppCallbackBuilder

SIM_KFID = "wksimulator0000001"


def _loopback_port(url: str) -> int | None:
    parts = urlsplit(url)
    if parts.scheme == "http" and parts.hostname in {"127.0.0.1", "localhost"} and parts.port:
        return parts.port
    return None


class Command(BaseCommand):
    help = "Ask a self-built app (or its 微信客服) a question the way WeCom does."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="the app's slug")
        parser.add_argument("text", help="the message")
        parser.add_argument("--user", default="zhangsan", help="userid (or external_userid)")
        parser.add_argument("--kf", action="store_true", help="ask as a 微信客服 customer")
        parser.add_argument("--url", default=settings.PUBLIC_BASE_URL, help="the server's URL")
        parser.add_argument("--port", type=int, default=None, help="serve WeCom's API here")
        parser.add_argument("--timeout", type=float, default=400.0, help="seconds to wait")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        app = WeComApp.objects.filter(slug=options["slug"]).first()
        if app is None:
            raise CommandError(_("No app with slug %(slug)s.") % {"slug": options["slug"]})
        port = options["port"] or _loopback_port(settings.WECOM_API_BASE)
        if port is None:
            raise CommandError(
                _(
                    "Start the server and workers with WECOM_API_BASE=http://127.0.0.1:PORT "
                    "and pass --port PORT."
                )
            )
        user = options["user"]
        builder = AppCallbackBuilder(
            token=app.token,
            encoding_aes_key=app.encoding_aes_key,
            corp_id=app.corp_id,
            agent_id=app.agent_id,
        )
        url = options["url"].rstrip("/") + app.callback_path()
        with AppApiServer(
            corp_id=app.corp_id,
            secret=app.secret,
            agent_id=app.agent_id,
            users={user},
            open_kfids={SIM_KFID},
            port=port,
        ) as api:
            started = time.monotonic()
            if options["kf"]:
                token = api.kf.customer_says(
                    open_kfid=SIM_KFID, external_userid=user, text=options["text"]
                )
                msgid = f"kf:{api.kf.msgids[-1]}"
                response = builder.post(url, builder.kf_event_xml(token=token, open_kfid=SIM_KFID))
            else:
                number = str(secrets.randbelow(10**12))
                msgid = f"app:{number}"
                xml = builder.text_xml(userid=user, content=options["text"], msgid=number)
                response = builder.post(url, xml)
            if response.status_code != 200:
                refused = _("The callback was refused: HTTP %(status)s")
                raise CommandError(refused % {"status": response.status_code})
            turn = self._wait_pushed(msgid, options["timeout"], started)
            received = api.kf.texts_to(user) if options["kf"] else api.contents(touser=user)
        total = time.monotonic() - started
        delivery = AppDelivery.objects.filter(turn=turn).first()
        parts = received[1:] if delivery and delivery.notice_sent_at else received
        answer = "".join(part_number_strip(part) for part in parts)
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "messages": received,
                        "status": turn.status,
                        "push_error": turn.push_error,
                        "total_seconds": round(total, 4),
                    },
                    ensure_ascii=False,
                )
            )
        else:
            self.stdout.write(answer)
            self.stderr.write(
                _("%(n)d message(s) · %(status)s · total %(total)s")
                % {"n": len(received), "status": turn.status, "total": f"{total:.2f}s"}
            )
        if turn.push_error:
            raise CommandError(_("Sending failed: %(error)s") % {"error": turn.push_error})

    def _wait_pushed(self, msgid: str, timeout: float, started: float) -> Turn:
        while time.monotonic() - started < timeout:
            turn = Turn.objects.filter(msgid=msgid).first()
            if turn is not None and (turn.pushed_at is not None or turn.push_error):
                return turn
            time.sleep(0.1)
        raise CommandError(_("No answer was sent within the timeout."))

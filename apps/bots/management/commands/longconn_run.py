"""Hold the long connections of all long-connection bots (README "Long connection")."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from apps.bots.connector import Connector, ConnectorSettings


class Command(BaseCommand):
    help = "Run the long-connection connector until SIGTERM or Ctrl-C."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default=settings.WECOM_LONGCONN_URL, help="WeCom's address")

    def handle(self, *args: Any, **options: Any) -> None:
        config = ConnectorSettings(
            url=options["url"],
            lease_seconds=settings.WECOM_LONGCONN_LEASE_SECONDS,
            poll_seconds=settings.WECOM_LONGCONN_POLL_SECONDS,
            forward_seconds=settings.WECOM_LONGCONN_FORWARD_SECONDS,
            max_auth_failures=settings.WECOM_LONGCONN_MAX_AUTH_FAILURES,
            backoff_seconds=settings.WECOM_LONGCONN_BACKOFF_SECONDS,
        )
        asyncio.run(self._run(config))

    async def _run(self, config: ConnectorSettings) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await Connector(config).run(stop)

"""WeCom's group-robot webhook on loopback: keys, markdown checks and the 20-per-minute limit.

Tests and `make run` point `WECOM_API_BASE` here and read what a group would have seen.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from wecom.loopback import LoopbackServer
from wecom.robot import (
    INVALID_KEY,
    MAX_MARKDOWN_BYTES,
    MESSAGES_PER_MINUTE,
    RATE_LIMITED,
    WEBHOOK_PATH,
)


class RobotWebhookServer(LoopbackServer):
    """Accepts messages for the keys it was given; `messages(key)` returns what arrived."""

    def __init__(
        self,
        *,
        keys: set[str],
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(_Handler, host=host, port=port)
        self.keys = set(keys)
        self.clock = clock  # tests move it forward instead of waiting a minute
        self._lock = threading.Lock()
        self._messages: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._sent_at: dict[str, deque[float]] = defaultdict(deque)
        self.refused: list[tuple[str, int]] = []

    def messages(self, key: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._messages[key])

    def accept(self, key: str, body: Any, now: float) -> tuple[int, str]:
        if key not in self.keys:
            return INVALID_KEY, "invalid webhook url"
        if not isinstance(body, dict) or body.get("msgtype") not in {"text", "markdown"}:
            return 40008, "invalid message type"
        content = (body.get(body["msgtype"]) or {}).get("content")
        if not isinstance(content, str) or not content:
            return 44004, "empty content"
        if len(content.encode()) > MAX_MARKDOWN_BYTES:
            return 40058, "content exceeds the length limit"
        with self._lock:
            recent = self._sent_at[key]
            while recent and recent[0] <= now - 60:
                recent.popleft()
            if len(recent) >= MESSAGES_PER_MINUTE:
                self.refused.append((key, RATE_LIMITED))
                return RATE_LIMITED, "api freq out of limit"
            recent.append(now)
            self._messages[key].append(body)
        return 0, "ok"


class _Handler(BaseHTTPRequestHandler):
    server: RobotWebhookServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path != WEBHOOK_PATH:
            self.send_error(404)
            return
        key = parse_qs(url.query).get("key", [""])[0]
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            body = None
        errcode, errmsg = self.server.accept(key, body, self.server.clock())
        payload = json.dumps({"errcode": errcode, "errmsg": errmsg}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

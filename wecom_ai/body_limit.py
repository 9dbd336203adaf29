"""Refuse oversized request bodies before anything reads them (ASGI middleware).

Django's ASGI handler spools the whole body to a temporary file before a view runs, so a
view's own size check comes after a 100 MB upload was already taken in. This layer sits in
front: a declared Content-Length over the limit is answered 413 without reading a byte,
and a chunked body is counted as it streams and cut off the moment it passes the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _answer(send: Send, status: int, text: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(text)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": text})


class BodySizeLimitMiddleware:
    """Cap every HTTP request body: the first matching path prefix's limit, else `default`.

    `limits` pairs a path prefix with its byte limit (the WeCom callback needs kilobytes;
    only the upload pages need megabytes).
    """

    def __init__(self, app: ASGIApp, *, default: int, limits: Sequence[tuple[str, int]] = ()):
        self.app = app
        self.default = default
        self.limits = tuple(limits)

    def limit_for(self, path: str) -> int:
        for prefix, limit in self.limits:
            if path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limit_for(path)
        lengths = [value for name, value in scope.get("headers", ()) if name == b"content-length"]
        if lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                logger.warning("request to %s with an invalid Content-Length refused", path)
                await _answer(send, 400, b"invalid request")
                return
            if int(lengths[0]) > limit:
                logger.warning("request body of %s bytes to %s refused", int(lengths[0]), path)
                await _answer(send, 413, b"payload too large")
                return
        gate = _Gate(send)
        await self.app(scope, _Counted(receive, gate, limit=limit, path=path), gate)


class _Gate:
    """Passes the app's messages on until the limit has answered in its place."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False
        self.closed = False

    async def __call__(self, message: Message) -> None:
        if self.closed:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)

    async def refuse(self) -> None:
        """Answer 413 unless the app already began its own answer, then let nothing through."""
        if not self.started and not self.closed:
            await _answer(self.send, 413, b"payload too large")
        self.closed = True


class _Counted:
    """`receive` that counts body bytes; past the limit it answers 413 and reports a disconnect.

    The app (Django) treats the disconnect as an aborted request and stops reading, so the
    rest of the body is never taken in.
    """

    def __init__(self, receive: Receive, gate: _Gate, *, limit: int, path: str) -> None:
        self.receive = receive
        self.gate = gate
        self.limit = limit
        self.path = path
        self.seen = 0
        self.aborted = False

    async def __call__(self) -> Message:
        if self.aborted:
            return {"type": "http.disconnect"}
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.aborted = True
                logger.warning("request body to %s passed %s bytes; cut off", self.path, self.limit)
                await self.gate.refuse()
                return {"type": "http.disconnect"}
        return message

"""WeCom's side of the AI bot's long connection, on loopback, for tests, benchmarks and demos.

`LongConnSimulator` is a WebSocket server speaking doc 101463: it checks `aibot_subscribe`
against the configured bots (a wrong secret gets WeCom's errcode and the socket closed),
answers `ping`, pushes message and event callbacks, acks the bot's replies and refuses what
WeCom refuses (unknown req_id, an expired or finished stream, a fourth stream left open for
one user, the per-conversation rate limit), and kicks an older connection with
`disconnected_event` when a second one subscribes the same bot. The same port serves
encrypted media over plain HTTP (`/media/…`), like the 5-minute URLs in file and image
callbacks. Tests can drop a socket without a close frame to play a network failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from wecom.longconn.frames import (
    CMD_EVENT_CALLBACK,
    CMD_MSG_CALLBACK,
    CMD_PING,
    CMD_RESPOND_MSG,
    CMD_RESPOND_UPDATE,
    CMD_RESPOND_WELCOME,
    CMD_SEND_MSG,
    CMD_SUBSCRIBE,
    ERRCODE_AUTH_FAILED,
    ERRCODE_INVALID_REQ_ID,
    ERRCODE_OK,
    ERRCODE_RATE_LIMITED,
    ERRCODE_STREAM_EXPIRED,
    EVENT_DISCONNECTED,
    EVENT_ENTER_CHAT,
    EVENT_TEMPLATE_CARD,
    MAX_FRAME_BYTES,
    Ack,
    Frame,
    FrameError,
    new_req_id,
    parse_frame,
)
from wecom.longconn.media import media_encrypt
from wecom.longconn.throttle import RateBudget, RateLimits

MEDIA_PATH = "/media/"
# The simulator's own code for a body it cannot use (WeCom's "invalid parameter" family):
# rely only on "non-zero".
ERRCODE_INVALID_BODY = 40058
# Likewise the simulator's own code for a fourth stream left open for one user (WeCom lets a
# user have three messages awaiting an answer per bot; its real code is unverified).
ERRCODE_TOO_MANY_IN_FLIGHT = 846609
MAX_IN_FLIGHT_PER_USER = 3
MEDIA_TTL_SECONDS = 300.0
CARD_DEADLINE_SECONDS = 5.0
STREAM_TTL_SECONDS = 360.0


def _sender(frame: Frame) -> str:
    sender = frame.body.get("from")
    userid = sender.get("userid") if isinstance(sender, dict) else None
    return userid if isinstance(userid, str) else ""


class LongConnSimulatorError(Exception):
    """The test asked the simulator for something impossible (e.g. no bot subscribed)."""


@dataclass(frozen=True, slots=True)
class Received:
    """One frame the bot sent, with the errcode the simulator answered."""

    bot_id: str
    frame: Frame
    errcode: int
    at: float


@dataclass
class _Pushed:
    bot_id: str
    frame: Frame
    conversation: str
    at: float
    answered: bool = False


@dataclass
class _Stream:
    req_id: str
    bot_id: str = ""
    userid: str = ""
    opened_at: float = 0.0
    finished: bool = False
    frames: int = 0


@dataclass
class _Media:
    data: bytes
    expires_at: float


@dataclass
class SubscribeAttempt:
    bot_id: str
    errcode: int
    at: float = field(default_factory=time.monotonic)


class LongConnSimulator:
    """Plays WeCom's long-connection endpoint for the bots in `bots` (bot_id → secret)."""

    def __init__(
        self,
        *,
        bots: dict[str, str],
        host: str = "127.0.0.1",
        port: int = 0,
        limits: RateLimits | None = None,
        stream_ttl: float = STREAM_TTL_SECONDS,
        card_deadline: float = CARD_DEADLINE_SECONDS,
        subscribe_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bots = dict(bots)
        self.host = host
        self.port = port
        self.limits = (limits or RateLimits()).exact()
        self.stream_ttl = stream_ttl
        self.card_deadline = card_deadline
        self.subscribe_timeout = subscribe_timeout
        self._clock = clock
        self._server: Server | None = None
        self._sessions: dict[str, ServerConnection] = {}
        self._pushed: dict[str, _Pushed] = {}
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._budgets: dict[str, RateBudget] = {}
        self._media: dict[str, _Media] = {}
        # (bot_id, userid) → the most streams that user had open at once.
        self.in_flight_peak: dict[tuple[str, str], int] = {}
        self._changed = asyncio.Condition()
        self.subscribe_attempts: list[SubscribeAttempt] = []
        self.received: list[Received] = []
        self.kicked: list[str] = []
        self.malformed = 0
        self.pings = 0
        # False plays a connection that died silently: pings go unanswered.
        self.answer_pings = True

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        self._server = await serve(
            self._serve,
            self.host,
            self.port,
            process_request=self._http,
            ping_interval=None,
            max_size=MAX_FRAME_BYTES,
        )
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    # -- observation --------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds after some frame or connection change."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    def subscribed(self, bot_id: str) -> bool:
        return bot_id in self._sessions

    def successful_subscribes(self, bot_id: str) -> int:
        return sum(1 for a in self.subscribe_attempts if a.bot_id == bot_id and a.errcode == 0)

    def replies(self, req_id: str, *, cmd: str = CMD_RESPOND_MSG) -> list[Received]:
        """Frames the bot sent under `req_id`, refused ones included (see `errcode`)."""
        return [r for r in self.received if r.frame.req_id == req_id and r.frame.cmd == cmd]

    def accepted_frames(self, conversation: str) -> list[Received]:
        """Replies and pushes accepted into one conversation, in order."""
        result = []
        for r in self.received:
            if r.errcode != ERRCODE_OK or r.frame.cmd in (CMD_PING, CMD_SUBSCRIBE):
                continue
            if self._conversation_of(r.frame) == conversation:
                result.append(r)
        return result

    async def wait_finished(self, req_id: str, timeout: float = 10.0) -> Received:
        """The accepted frame that closed the stream answering `req_id`."""

        def final() -> Received | None:
            for r in self.replies(req_id):
                stream = r.frame.body.get("stream")
                if r.errcode == 0 and isinstance(stream, dict) and stream.get("finish") is True:
                    return r
            return None

        await self.wait_until(lambda: final() is not None, timeout)
        result = final()
        assert result is not None
        return result

    # -- pushes -------------------------------------------------------------------------------

    async def _push(self, bot_id: str, cmd: str, body: dict[str, Any]) -> Frame:
        ws = self._sessions.get(bot_id)
        if ws is None:
            raise LongConnSimulatorError(f"bot {bot_id!r} has no subscribed connection")
        frame = Frame(cmd=cmd, req_id=new_req_id("callback"), body=body)
        conversation = frame.conversation_key or frame.req_id
        self._pushed[frame.req_id] = _Pushed(bot_id, frame, conversation, self._clock())
        await ws.send(frame.to_json())
        return frame

    def _base(self, bot_id: str, msgtype: str, userid: str, chatid: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "msgid": secrets.token_hex(16),
            "aibotid": bot_id,
            "chattype": "group" if chatid else "single",
            "from": {"userid": userid},
            "msgtype": msgtype,
        }
        if chatid:
            body["chatid"] = chatid
        return body

    async def push_text(
        self,
        bot_id: str,
        text: str,
        *,
        userid: str = "zhangsan",
        chatid: str | None = None,
        bot_name: str = "RobotA",
    ) -> Frame:
        """A text message; in a group it carries the @-mention inline, as WeCom sends it."""
        body = self._base(bot_id, "text", userid, chatid)
        body["text"] = {"content": f"@{bot_name} {text}" if chatid else text}
        return await self._push(bot_id, CMD_MSG_CALLBACK, body)

    async def push_media(
        self,
        bot_id: str,
        data: bytes,
        *,
        msgtype: str = "file",
        userid: str = "zhangsan",
        filename: str | None = None,
    ) -> tuple[Frame, str]:
        """A file or image (1:1 only): served encrypted, the URL and `aeskey` in the callback."""
        url, aeskey = self.serve_media(data)
        body = self._base(bot_id, msgtype, userid, None)
        item: dict[str, Any] = {"url": url, "aeskey": aeskey}
        if filename is not None:
            item["filename"] = filename
        body[msgtype] = item
        return await self._push(bot_id, CMD_MSG_CALLBACK, body), aeskey

    def serve_media(self, data: bytes, *, aeskey: str | None = None) -> tuple[str, str]:
        """Serve `data` encrypted for five minutes: (URL, key). Callback-mode files use the
        bot's EncodingAESKey as the key, long-connection ones a key of their own."""
        aeskey = aeskey or base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        media_id = secrets.token_urlsafe(16)
        self._media[media_id] = _Media(
            media_encrypt(data=data, aeskey=aeskey), self._clock() + MEDIA_TTL_SECONDS
        )
        return f"http://{self.host}:{self.port}{MEDIA_PATH}{media_id}", aeskey

    async def push_event(
        self,
        bot_id: str,
        eventtype: str,
        *,
        userid: str = "zhangsan",
        chatid: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Frame:
        """An event callback; `detail` goes under `event.<eventtype>` (e.g. a feedback body)."""
        body = self._base(bot_id, "event", userid, chatid)
        event: dict[str, Any] = {"eventtype": eventtype}
        if detail is not None:
            event[eventtype] = detail
        body["event"] = event
        return await self._push(bot_id, CMD_EVENT_CALLBACK, body)

    async def send_raw(self, bot_id: str, text: str) -> None:
        """Send anything, malformed frames included, on the bot's connection."""
        ws = self._sessions.get(bot_id)
        if ws is None:
            raise LongConnSimulatorError(f"bot {bot_id!r} has no subscribed connection")
        await ws.send(text)

    async def drop(self, bot_id: str) -> None:
        """Cut the bot's socket without a close frame, as a failing network would."""
        ws = self._sessions.pop(bot_id, None)
        if ws is None:
            raise LongConnSimulatorError(f"bot {bot_id!r} has no subscribed connection")
        ws.transport.abort()
        await self._notify()

    # -- HTTP side: media ---------------------------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if not request.path.startswith(MEDIA_PATH):
            return None  # a WebSocket handshake
        media = self._media.get(request.path[len(MEDIA_PATH) :])
        if media is None or media.expires_at < self._clock():
            return connection.respond(HTTPStatus.NOT_FOUND, "media not found or expired\n")
        headers = Headers(
            [
                ("Connection", "close"),
                ("Content-Length", str(len(media.data))),
                ("Content-Type", "application/octet-stream"),
            ]
        )
        return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, media.data)

    # -- WebSocket side -----------------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        bot_id = await self._subscribe(ws)
        if bot_id is None:
            return
        try:
            async for raw in ws:
                await self._on_frame(bot_id, ws, raw)
        except ConnectionClosed:
            pass
        finally:
            if self._sessions.get(bot_id) is ws:
                del self._sessions[bot_id]
            await self._notify()

    async def _subscribe(self, ws: ServerConnection) -> str | None:
        try:
            raw = await asyncio.wait_for(ws.recv(), self.subscribe_timeout)
            item = parse_frame(raw)
        except (TimeoutError, ConnectionClosed, FrameError):
            self.malformed += 1
            await ws.close()
            return None
        if not isinstance(item, Frame) or item.cmd != CMD_SUBSCRIBE:
            await ws.send(Ack(item.req_id, ERRCODE_INVALID_BODY, "subscribe first").to_json())
            await ws.close()
            return None
        bot_id = str(item.body.get("bot_id") or "")
        secret = str(item.body.get("secret") or "")
        expected = self.bots.get(bot_id)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            self.subscribe_attempts.append(SubscribeAttempt(bot_id, ERRCODE_AUTH_FAILED))
            await ws.send(
                Ack(item.req_id, ERRCODE_AUTH_FAILED, "invalid bot_id or secret").to_json()
            )
            await ws.close()
            await self._notify()
            return None
        previous = self._sessions.get(bot_id)
        self._sessions[bot_id] = ws
        self.subscribe_attempts.append(SubscribeAttempt(bot_id, ERRCODE_OK))
        await ws.send(Ack(item.req_id, ERRCODE_OK, "ok").to_json())
        if previous is not None:
            await self._kick(bot_id, previous)
        await self._notify()
        return bot_id

    async def _kick(self, bot_id: str, ws: ServerConnection) -> None:
        self.kicked.append(bot_id)
        body = self._base(bot_id, "event", "", None)
        body["event"] = {"eventtype": EVENT_DISCONNECTED}
        frame = Frame(cmd=CMD_EVENT_CALLBACK, req_id=new_req_id("kick"), body=body)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(frame.to_json())
            await ws.close()

    async def _on_frame(self, bot_id: str, ws: ServerConnection, raw: str | bytes) -> None:
        try:
            item = parse_frame(raw)
        except FrameError:
            self.malformed += 1
            await self._notify()
            return
        if isinstance(item, Ack):
            return  # the bot acking something: nothing to do
        if item.cmd == CMD_PING:
            self.pings += 1
            await self._notify()
            if not self.answer_pings:
                return
            errcode, errmsg = ERRCODE_OK, "ok"
        else:
            errcode, errmsg = self._check(bot_id, item)
        self.received.append(Received(bot_id, item, errcode, self._clock()))
        await ws.send(Ack(item.req_id, errcode, errmsg).to_json())
        await self._notify()

    # -- the rules ----------------------------------------------------------------------------

    def _conversation_of(self, frame: Frame) -> str | None:
        if frame.cmd == CMD_SEND_MSG:
            chatid = frame.body.get("chatid")
            return chatid if isinstance(chatid, str) else None
        pushed = self._pushed.get(frame.req_id)
        return pushed.conversation if pushed is not None else None

    def _budget(self, conversation: str) -> RateBudget:
        budget = self._budgets.get(conversation)
        if budget is None:
            budget = self._budgets[conversation] = RateBudget(self.limits, clock=self._clock)
        return budget

    def _check(self, bot_id: str, frame: Frame) -> tuple[int, str]:
        if frame.cmd == CMD_SEND_MSG:
            conversation = self._conversation_of(frame)
            known = {p.conversation for p in self._pushed.values() if p.bot_id == bot_id}
            if conversation is None or conversation not in known:
                return ERRCODE_INVALID_BODY, "chatid where no user spoke to the bot"
            return self._count(conversation)
        pushed = self._pushed.get(frame.req_id)
        if pushed is None or pushed.bot_id != bot_id:
            return ERRCODE_INVALID_REQ_ID, "invalid req_id"
        if frame.cmd == CMD_RESPOND_MSG:
            return self._check_stream(pushed, frame)
        if frame.cmd in (CMD_RESPOND_WELCOME, CMD_RESPOND_UPDATE):
            wanted = EVENT_ENTER_CHAT if frame.cmd == CMD_RESPOND_WELCOME else EVENT_TEMPLATE_CARD
            if pushed.frame.eventtype != wanted or pushed.answered:
                return ERRCODE_INVALID_REQ_ID, f"req_id is not an unanswered {wanted}"
            if self._clock() - pushed.at > self.card_deadline:
                return ERRCODE_STREAM_EXPIRED, "answer after the 5 s deadline"
            errcode, errmsg = self._count(pushed.conversation)
            pushed.answered = errcode == ERRCODE_OK
            return errcode, errmsg
        return ERRCODE_INVALID_BODY, f"unknown cmd {frame.cmd}"

    def _check_stream(self, pushed: _Pushed, frame: Frame) -> tuple[int, str]:
        stream = frame.body.get("stream")
        if frame.body.get("msgtype") != "stream" or not isinstance(stream, dict):
            return ERRCODE_INVALID_BODY, "msgtype stream with a stream object expected"
        stream_id = stream.get("id")
        if not isinstance(stream_id, str) or not stream_id:
            return ERRCODE_INVALID_BODY, "stream.id missing"
        key = (frame.req_id, stream_id)
        state = self._streams.get(key)
        if (state is not None and state.finished) or self._clock() - pushed.at > self.stream_ttl:
            return ERRCODE_STREAM_EXPIRED, "stream update expired"
        userid = _sender(pushed.frame)
        finish = stream.get("finish") is True
        if (
            state is None
            and not finish
            and self._open_streams(pushed.bot_id, userid) >= (MAX_IN_FLIGHT_PER_USER)
        ):
            return ERRCODE_TOO_MANY_IN_FLIGHT, "the user already has 3 messages awaiting answers"
        errcode, errmsg = self._count(pushed.conversation)
        if errcode != ERRCODE_OK:
            return errcode, errmsg
        if state is None:
            state = self._streams[key] = _Stream(
                req_id=frame.req_id, bot_id=pushed.bot_id, userid=userid, opened_at=pushed.at
            )
        state.frames += 1
        state.finished = finish
        peak_key = (pushed.bot_id, userid)
        self.in_flight_peak[peak_key] = max(
            self.in_flight_peak.get(peak_key, 0), self._open_streams(pushed.bot_id, userid)
        )
        return ERRCODE_OK, "ok"

    def _open_streams(self, bot_id: str, userid: str) -> int:
        now = self._clock()
        return sum(
            1
            for s in self._streams.values()
            if s.bot_id == bot_id
            and s.userid == userid
            and not s.finished
            and now - s.opened_at <= self.stream_ttl
        )

    def _count(self, conversation: str) -> tuple[int, str]:
        budget = self._budget(conversation)
        if budget.wait_seconds() > 0:
            return ERRCODE_RATE_LIMITED, "conversation rate limit exceeded"
        budget.take()
        return ERRCODE_OK, "ok"

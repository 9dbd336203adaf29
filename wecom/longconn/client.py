"""The long-connection client: dials WeCom, subscribes, keeps the socket alive and hands
callbacks to the app; the app answers through `stream`, `respond_welcome`, `respond_update`
and `send_markdown`.

One client holds one bot. `run()` returns only in a final phase: CLOSED after `stop()`,
STOPPED_KICKED when another subscriber took the bot over (fighting back would make two
connectors kick each other forever), and it raises `AuthGiveUp` after too many refused
subscribes in a row. Every other failure is a reconnect after a growing, jittered delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from wecom.longconn.frames import (
    CMD_PING,
    CMD_RESPOND_UPDATE,
    CMD_RESPOND_WELCOME,
    CMD_SEND_MSG,
    CMD_SUBSCRIBE,
    DEFAULT_URL,
    EVENT_DISCONNECTED,
    MAX_FRAME_BYTES,
    Ack,
    Frame,
    FrameError,
    new_req_id,
    parse_frame,
)
from wecom.longconn.replies import StreamReply, send_markdown_body
from wecom.longconn.state import (
    AckError,
    AckTimeout,
    AuthGiveUp,
    Backoff,
    ConnectionPhase,
    ConnectionState,
    NotConnected,
)
from wecom.longconn.throttle import RateBudgets, RateLimits

logger = logging.getLogger(__name__)

Handler = Callable[[Frame, "LongConnClient"], Awaitable[None]]
StateListener = Callable[[ConnectionState], None]


class _SubscribeRefused(Exception):
    def __init__(self, ack: Ack) -> None:
        super().__init__(f"errcode {ack.errcode}: {ack.errmsg}")
        self.ack = ack


def _now() -> datetime:
    return datetime.now(UTC)


class LongConnClient:
    """Holds one bot's long connection to WeCom (or to the simulator, on loopback)."""

    def __init__(
        self,
        *,
        bot_id: str,
        secret: str,
        handler: Handler,
        url: str = DEFAULT_URL,
        ping_interval: float = 30.0,
        max_missed_pings: int = 2,
        ack_timeout: float = 10.0,
        open_timeout: float = 10.0,
        backoff: Backoff | None = None,
        max_auth_failures: int = 5,
        rate_limits: RateLimits | None = None,
        on_state: StateListener | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not bot_id or not secret:
            raise ValueError("bot_id and secret must not be empty")
        self.bot_id = bot_id
        self._secret = secret
        self._handler = handler
        self.url = url
        self.ping_interval = ping_interval
        self.max_missed_pings = max_missed_pings
        self.ack_timeout = ack_timeout
        self.open_timeout = open_timeout
        self.backoff = backoff or Backoff()
        self.max_auth_failures = max_auth_failures
        self.budgets = RateBudgets(rate_limits or RateLimits())
        self.state = ConnectionState()
        self._on_state = on_state
        # Injected so tests can count the backoff waits without spending them.
        self._sleep = sleep
        self._rng = rng
        self._ws: ClientConnection | None = None
        self._pending: dict[str, deque[tuple[str, asyncio.Future[Ack]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self._stopping = False
        self._kicked = False

    def __repr__(self) -> str:
        # Never the secret.
        return f"LongConnClient(bot_id={self.bot_id!r}, url={self.url!r})"

    # -- state --------------------------------------------------------------------------------

    def _phase(self, phase: ConnectionPhase) -> None:
        self.state.phase = phase
        if self._on_state is not None:
            try:
                self._on_state(self.state)
            except Exception:  # a broken listener must not take the connection down
                logger.exception("long-connection state listener failed")

    def _stop_requested(self) -> bool:
        # A method, not the attribute: `stop()` flips it while `run()` awaits.
        return self._stopping

    async def wait_connected(self, timeout: float) -> None:
        """Return once subscribed; TimeoutError otherwise."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- the loop -----------------------------------------------------------------------------

    async def run(self) -> ConnectionPhase:
        """Connect, subscribe and serve until stopped, kicked, or the secret is refused."""
        self._stopping = False
        while not self._stop_requested():
            self.state.attempts += 1
            self._phase(ConnectionPhase.CONNECTING)
            try:
                async with connect(
                    self.url,
                    ping_interval=None,  # the protocol has its own ping command
                    open_timeout=self.open_timeout,
                    max_size=MAX_FRAME_BYTES,
                    proxy=None,
                ) as ws:
                    self._ws = ws
                    await self._session(ws)
            except _SubscribeRefused as refused:
                self._auth_refused(refused.ack)
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                self.state.error(f"connection failed: {exc.__class__.__name__}: {exc}")
                logger.warning("bot %s: long connection failed: %s", self.bot_id, exc)
            except InvalidURI as exc:
                self.state.error(f"invalid URL: {exc}")
                self._phase(ConnectionPhase.CLOSED)
                raise
            finally:
                self._disconnected()
            if self._kicked:
                self._phase(ConnectionPhase.STOPPED_KICKED)
                return self.state.phase
            if self._stop_requested():
                break
            self._phase(ConnectionPhase.BACKOFF)
            await self._sleep(self.backoff.delay(self.state.attempts, self._rng))
        self._phase(ConnectionPhase.CLOSED)
        return self.state.phase

    def _auth_refused(self, ack: Ack) -> None:
        self.state.auth_failures += 1
        self.state.error(f"subscribe refused: errcode {ack.errcode}: {ack.errmsg}")
        logger.error(
            "bot %s: subscribe refused (%d in a row): %s %s",
            self.bot_id,
            self.state.auth_failures,
            ack.errcode,
            ack.errmsg,
        )
        if self.state.auth_failures >= self.max_auth_failures:
            self._phase(ConnectionPhase.AUTH_FAILED)
            raise AuthGiveUp(
                attempts=self.state.auth_failures, errcode=ack.errcode, errmsg=ack.errmsg
            )

    def _disconnected(self) -> None:
        self._ws = None
        self._connected.clear()
        self.state.connected_since = None
        for waiters in self._pending.values():
            for _, future in waiters:
                if not future.done():
                    future.set_exception(NotConnected("the connection closed"))
        self._pending.clear()

    async def _session(self, ws: ClientConnection) -> None:
        self._phase(ConnectionPhase.SUBSCRIBING)
        reader = asyncio.create_task(self._read(ws))
        pinger: asyncio.Task[None] | None = None
        try:
            ack = await self._exchange(
                ws, CMD_SUBSCRIBE, {"bot_id": self.bot_id, "secret": self._secret}
            )
            if not ack.ok:
                raise _SubscribeRefused(ack)
            self.state.attempts = 0
            self.state.auth_failures = 0
            self.state.subscribes += 1
            self.state.connected_since = _now()
            self._connected.set()
            self._phase(ConnectionPhase.CONNECTED)
            pinger = asyncio.create_task(self._ping(ws))
            await reader
        finally:
            for task in (reader, pinger):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            self.state.last_message_at = _now()
            try:
                item = parse_frame(raw)
            except FrameError as exc:
                # A bad frame is WeCom's (or a proxy's) bug; log it and keep the connection.
                self.state.error(f"malformed frame: {exc}")
                logger.warning("bot %s: malformed frame ignored: %s", self.bot_id, exc)
                continue
            if isinstance(item, Ack):
                self._resolve(item)
            elif item.eventtype == EVENT_DISCONNECTED:
                self._kicked = True
                self.state.error("another connection subscribed this bot (disconnected_event)")
                logger.warning("bot %s: kicked by another subscriber; stopping", self.bot_id)
                await ws.close()
                return
            elif item.is_callback:
                self._spawn(self._dispatch(item))
            else:
                logger.info("bot %s: ignoring unknown command %s", self.bot_id, item.cmd)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, frame: Frame) -> None:
        try:
            await self._handler(frame, self)
        except Exception as exc:
            self.state.error(f"handler failed on {frame.cmd}: {exc.__class__.__name__}: {exc}")
            logger.exception("bot %s: handler failed on %s", self.bot_id, frame.req_id)

    def _resolve(self, ack: Ack) -> None:
        waiters = self._pending.get(ack.req_id)
        if not waiters:
            logger.debug("bot %s: ack for unknown req_id %s", self.bot_id, ack.req_id)
            return
        _, future = waiters.popleft()
        if not waiters:
            del self._pending[ack.req_id]
        # A cancelled waiter timed out (or its caller went away): this late ack is its own,
        # and must not be handed to the next command that reused the req_id.
        if not future.done():
            future.set_result(ack)

    async def _ping(self, ws: ClientConnection) -> None:
        missed = 0
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self._exchange(ws, CMD_PING, {})
                missed = 0
            except AckTimeout:
                missed += 1
                if missed >= self.max_missed_pings:
                    self.state.error(f"{missed} pings unanswered; reconnecting")
                    await ws.close()
                    return
            except (NotConnected, ConnectionClosed):
                return

    # -- commands -----------------------------------------------------------------------------

    async def _exchange(
        self, ws: ClientConnection, cmd: str, body: dict[str, Any], req_id: str | None = None
    ) -> Ack:
        req_id = req_id or new_req_id(cmd)
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(req_id, deque()).append((cmd, future))
        try:
            await ws.send(Frame(cmd=cmd, req_id=req_id, body=body).to_json())
        except ConnectionClosed:
            future.cancel()
            raise NotConnected("the connection closed") from None
        try:
            # On a timeout wait_for cancels the future, which stays queued as a tombstone.
            return await asyncio.wait_for(future, self.ack_timeout)
        except TimeoutError:
            raise AckTimeout(f"no ack for {cmd} within {self.ack_timeout}s") from None

    async def request(self, cmd: str, body: dict[str, Any], *, req_id: str | None = None) -> Ack:
        """Send one command on the subscribed connection; AckError on a non-zero errcode."""
        ws = self._ws
        if ws is None or self.state.phase != ConnectionPhase.CONNECTED:
            raise NotConnected(f"bot {self.bot_id} is not connected")
        ack = await self._exchange(ws, cmd, body, req_id)
        if not ack.ok:
            raise AckError(cmd=cmd, errcode=ack.errcode, errmsg=ack.errmsg)
        return ack

    def stream(
        self, callback: Frame, *, stream_id: str | None = None, feedback_id: str | None = None
    ) -> StreamReply:
        """A throttled stream answering `callback`; `feedback_id` rides on its first frame."""
        key = callback.conversation_key or callback.req_id
        return StreamReply(
            sender=self,
            req_id=callback.req_id,
            stream_id=stream_id or secrets.token_hex(16),
            budget=self.budgets.of(key),
            feedback_id=feedback_id,
        )

    async def _counted(self, callback: Frame, cmd: str, body: dict[str, Any]) -> Ack:
        # Welcome and card updates have 5 s: they are counted, never held back.
        self.budgets.of(callback.conversation_key or callback.req_id).take()
        return await self.request(cmd, body, req_id=callback.req_id)

    async def respond_welcome(self, callback: Frame, body: dict[str, Any]) -> Ack:
        """Answer an `enter_chat` event (text or template card) under its req_id."""
        return await self._counted(callback, CMD_RESPOND_WELCOME, body)

    async def respond_update(self, callback: Frame, body: dict[str, Any]) -> Ack:
        """Replace the card a `template_card_event` came from (`update_card_body`)."""
        return await self._counted(callback, CMD_RESPOND_UPDATE, body)

    async def send_markdown(self, *, chatid: str, chat_type: Literal[1, 2], content: str) -> Ack:
        """Push a message proactively; waits for the conversation's budget, keeping one slot
        in reserve so that an answer being streamed there can still finish."""
        budget = self.budgets.of(chatid)
        while (wait := budget.wait_seconds(reserve=1)) > 0:
            await asyncio.sleep(wait)
        budget.take()
        body = send_markdown_body(chatid=chatid, chat_type=chat_type, content=content)
        return await self.request(CMD_SEND_MSG, body)

    async def stop(self) -> None:
        """Close the connection and make `run()` return CLOSED (no reconnect)."""
        self._stopping = True
        ws = self._ws
        if ws is not None:
            await ws.close()
        for task in list(self._tasks):
            task.cancel()

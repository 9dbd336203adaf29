"""The connector: one asyncio loop holding the long connections of all long-connection bots.

Every few seconds it reads the bots, takes or renews a lease per bot (one conditional
UPDATE on the bot's `LongConnection` row, so across any number of replicas exactly one
holds a bot) and starts, restarts or stops a `LongConnClient` to match. A holder killed
with -9 stops renewing; another replica takes its bots over when the lease runs out.

Answers are forwarded, not pushed by the worker: the worker keeps writing the stream state
to Redis as it does for callbacks, and the connector holding the bot reads it and sends it
as `StreamReply` frames. The worker then needs no socket and no idea which replica holds
the bot, and a new holder resumes a dead holder's unfinished answers from the same state
(`Turn.longconn_delivered_at` says which still need their final frame).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections
from django.utils import timezone

from apps.bots.services import longconn
from apps.bots.services.longconn import ForwardJob, LongConnBot, Welcome
from wecom.longconn import (
    AckError,
    AckTimeout,
    AuthGiveUp,
    Backoff,
    ConnectionPhase,
    ConnectionState,
    Frame,
    LongConnClient,
    NotConnected,
    StreamReply,
)
from wecom.longconn.frames import ERRCODE_RATE_LIMITED, ERRCODE_STREAM_EXPIRED

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def _db(fn: Callable[P, R]) -> Callable[P, Any]:
    return sync_to_async(fn, thread_sensitive=True)


@dataclass
class ConnectorSettings:
    url: str
    lease_seconds: float = 10.0
    poll_seconds: float = 2.0
    forward_seconds: float = 0.3
    max_auth_failures: int = 5
    backoff_seconds: float = 1.0


@dataclass
class HeldBot:
    """A bot this connector holds the lease of, its client and the answers being sent."""

    bot: LongConnBot
    client: LongConnClient
    serving: asyncio.Task[None] | None = None
    forwarders: dict[int, asyncio.Task[None]] = field(default_factory=dict)


class Connector:
    def __init__(self, config: ConnectorSettings, *, holder: str | None = None) -> None:
        self.config = config
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held: dict[int, HeldBot] = {}
        self._background: set[asyncio.Task[Any]] = set()

    # -- supervision --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        logger.info("connector %s started, dialling %s", self.holder, self.config.url)
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:  # the database or Redis hiccuped: try again next tick
                    logger.exception("connector tick failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.config.poll_seconds)
        finally:
            for held in list(self.held.values()):
                # A replica stopping cleanly hands its bots over at once, not after the lease.
                try:
                    await self._drop(held, release=True)
                except Exception:
                    logger.warning("bot %s: lease not released", held.bot.slug, exc_info=True)

    async def tick(self) -> None:
        """Match the held connections to the bots: start, restart, renew, resume, stop."""
        await _db(close_old_connections)()
        bots = {bot.pk: bot for bot in await _db(longconn.longconn_bots)()}
        for pk, held in list(self.held.items()):
            current = bots.get(pk)
            if current is None or current.fingerprint != held.bot.fingerprint:
                logger.info("bot %s removed or changed; closing its connection", held.bot.slug)
                await self._drop(held, release=True)
        for pk, bot in bots.items():
            won = await _db(longconn.longconn_lease_take)(
                bot_id=pk, holder=self.holder, ttl=self.config.lease_seconds
            )
            held = self.held.get(pk)
            if not won:
                if held is not None:
                    logger.warning("bot %s: lease lost to another connector", bot.slug)
                    await self._drop(held, release=False)
                continue
            if held is None:
                held = self.held[pk] = self._start(bot)
            await self._state_write(held)
            if held.client.state.phase == ConnectionPhase.CONNECTED:
                await self._resume(held)

    def _start(self, bot: LongConnBot) -> HeldBot:
        held: HeldBot

        async def handler(frame: Frame, client: LongConnClient) -> None:
            await self._on_callback(held, frame, client)

        def on_state(state: ConnectionState) -> None:
            self._spawn(self._state_write(held))
            if state.phase == ConnectionPhase.CONNECTED:
                self._spawn(self._resume(held))

        client = LongConnClient(
            bot_id=bot.bot_id,
            secret=bot.secret,
            handler=handler,
            url=self.config.url,
            backoff=Backoff(initial=self.config.backoff_seconds),
            max_auth_failures=self.config.max_auth_failures,
            on_state=on_state,
        )
        held = HeldBot(bot=bot, client=client)
        held.serving = asyncio.ensure_future(self._serve(held))
        logger.info("bot %s: holding its long connection", bot.slug)
        return held

    async def _serve(self, held: HeldBot) -> None:
        """Run the client; a kicked or refused bot stays parked until its settings change."""
        try:
            phase = await held.client.run()
            if phase == ConnectionPhase.STOPPED_KICKED:
                logger.error("bot %s: another subscriber took the bot; parked", held.bot.slug)
        except AuthGiveUp as exc:
            logger.error("bot %s: %s; parked until its settings change", held.bot.slug, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            held.client.state.error(f"{exc.__class__.__name__}: {exc}")
            logger.exception("bot %s: the connection loop failed", held.bot.slug)
        await self._state_write(held)

    async def _drop(self, held: HeldBot, *, release: bool) -> None:
        self.held.pop(held.bot.pk, None)
        for task in held.forwarders.values():
            task.cancel()
        with contextlib.suppress(Exception):
            await held.client.stop()
        if held.serving is not None:
            held.serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await held.serving
        if release:
            await self._state_write(held)
            await _db(longconn.longconn_lease_release)(bot_id=held.bot.pk, holder=self.holder)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _state_write(self, held: HeldBot) -> None:
        try:
            await _db(longconn.longconn_state_save)(
                bot_id=held.bot.pk, holder=self.holder, state=held.client.state.as_dict()
            )
        except Exception:  # shown state is advisory; the next tick writes it again
            logger.warning("bot %s: state not saved", held.bot.slug, exc_info=True)

    # -- inbound ------------------------------------------------------------------------------

    async def _on_callback(self, held: HeldBot, frame: Frame, client: LongConnClient) -> None:
        result = await _db(longconn.longconn_callback_receive)(
            bot_id=held.bot.pk, body=frame.body, req_id=frame.req_id, received_at=timezone.now()
        )
        if isinstance(result, Welcome):
            await client.respond_welcome(frame, result.body)
        elif isinstance(result, ForwardJob):
            self._forward_start(held, result)

    # -- answers ------------------------------------------------------------------------------

    async def _resume(self, held: HeldBot) -> None:
        try:
            jobs = await _db(longconn.longconn_undelivered)(bot_id=held.bot.pk)
        except Exception:
            logger.warning("bot %s: undelivered answers not read", held.bot.slug, exc_info=True)
            return
        for job in jobs:
            self._forward_start(held, job)

    def _forward_start(self, held: HeldBot, job: ForwardJob) -> None:
        if job.turn_id in held.forwarders or self.held.get(held.bot.pk) is not held:
            return
        task = asyncio.ensure_future(self._forward(held, job))
        held.forwarders[job.turn_id] = task
        task.add_done_callback(lambda _t: held.forwarders.pop(job.turn_id, None))

    async def _forward(self, held: HeldBot, job: ForwardJob) -> None:
        """Send the answer's stream state as frames until its final one is acknowledged."""
        client = held.client
        reply = StreamReply(
            sender=client,
            req_id=job.req_id,
            stream_id=job.stream_id,
            budget=client.budgets.of(job.conversation_key),
            feedback_id=job.stream_id,
        )
        shown: str | None = None
        try:
            # A resume that read the list just before another forwarder recorded the end.
            if await _db(longconn.longconn_is_delivered)(turn_id=job.turn_id):
                return
            while True:
                content, finish = await _db(longconn.longconn_stream_snapshot)(
                    turn_id=job.turn_id, stream_id=job.stream_id
                )
                if finish:
                    await self._finish(held, job, reply, content)
                    return
                if content and content != shown and await reply.update(content):
                    shown = content
                await asyncio.sleep(self.config.forward_seconds)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("bot %s: forwarding turn %s failed", held.bot.slug, job.turn_id)

    async def _finish(
        self, held: HeldBot, job: ForwardJob, reply: StreamReply, content: str
    ) -> None:
        """The final frame, through reconnects; recorded once WeCom acknowledged it.

        A final frame WeCom already has (sent by a holder that died before recording it) is
        refused as an expired stream: the stream id makes the resend harmless, never a
        second answer.
        """
        while True:
            try:
                await reply.finish(content)
                break
            except AckError as exc:
                if exc.errcode == ERRCODE_RATE_LIMITED:
                    await asyncio.sleep(reply._budget.limits.min_update_interval)
                    continue
                if exc.errcode == ERRCODE_STREAM_EXPIRED:
                    logger.info("turn %s: stream already closed at WeCom", job.turn_id)
                else:
                    logger.warning("turn %s: final frame refused: %s", job.turn_id, exc)
                break
            except (NotConnected, AckTimeout):
                await asyncio.sleep(max(1.0, self.config.forward_seconds))
        await self._push_rest(held, job)
        await _db(longconn.longconn_delivered)(turn_id=job.turn_id)

    async def _push_rest(self, held: HeldBot, job: ForwardJob) -> None:
        """An answer longer than its stream goes on with `aibot_send_msg`, after the final frame.

        Recorded as delivered only afterwards: a holder dying in between has its successor
        send the continuation again (the final frame itself is refused as already closed).
        """
        rest = await _db(longconn.longconn_rest)(turn_id=job.turn_id)
        while rest.pending:
            await asyncio.sleep(self.config.forward_seconds)
            rest = await _db(longconn.longconn_rest)(turn_id=job.turn_id)
        for part in rest.parts:
            while True:
                try:
                    await held.client.send_markdown(
                        chatid=rest.chatid, chat_type=rest.chat_type, content=part
                    )
                    break
                except AckError as exc:
                    if exc.errcode != ERRCODE_RATE_LIMITED:
                        logger.warning("turn %s: continuation refused: %s", job.turn_id, exc)
                        return
                    await asyncio.sleep(held.client.budgets.limits.min_update_interval)
                except (NotConnected, AckTimeout):
                    await asyncio.sleep(max(1.0, self.config.forward_seconds))

"""Reply bodies for the long connection, and the throttled stream an answer is written through.

A stream is answered with `aibot_respond_msg` under the callback's req_id; each frame carries
the whole text so far under the same `stream.id`, `finish: true` closes it, and `feedback.id`
goes on the first frame only (WeCom's SDKs: "仅在首次回复时设置"), so the 👍/👎 buttons are
there even when the answer never finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from wecom.longconn.frames import ERRCODE_RATE_LIMITED, Ack
from wecom.longconn.state import AckError, AckTimeout, NotConnected
from wecom.longconn.throttle import RateBudget
from wecom.messages import markdown_payload, stream_reply, text_reply

logger = logging.getLogger(__name__)

CHAT_TYPE_SINGLE = 1
CHAT_TYPE_GROUP = 2
# A final frame refused for the rate limit is retried this often, each after a wait.
FINAL_FRAME_RETRIES = 5


class CommandSender(Protocol):
    """What a stream needs from the client: send one command and await its ack."""

    async def request(
        self, cmd: str, body: dict[str, Any], *, req_id: str | None = None
    ) -> Ack: ...


def welcome_text_body(content: str) -> dict[str, Any]:
    """`aibot_respond_welcome_msg` body with a plain text welcome."""
    return text_reply(content)


def template_card_body(template_card: dict[str, Any]) -> dict[str, Any]:
    """A welcome or reply that is a template card (buttons, votes, ...)."""
    return {"msgtype": "template_card", "template_card": template_card}


def update_card_body(
    template_card: dict[str, Any], *, userids: list[str] | None = None
) -> dict[str, Any]:
    """`aibot_respond_update_msg` body: replaces the card a `template_card_event` came from."""
    body: dict[str, Any] = {"response_type": "update_template_card", "template_card": template_card}
    if userids:
        body["userids"] = userids
    return body


def send_markdown_body(*, chatid: str, chat_type: Literal[1, 2], content: str) -> dict[str, Any]:
    """`aibot_send_msg` body: a proactive markdown message into a chat where the user spoke."""
    return {"chatid": chatid, "chat_type": chat_type, **markdown_payload(content)}


class StreamReply:
    """One answer written through the long connection inside the conversation's budget.

    `update` coalesces: it sends only when a slot is free with one kept in reserve and the
    even spacing allows, otherwise it just remembers the latest text (the next frame carries
    it, since every frame is the whole text). `finish` waits for a slot if it must and
    never drops the final frame.
    """

    def __init__(
        self,
        *,
        sender: CommandSender,
        req_id: str,
        stream_id: str,
        budget: RateBudget,
        feedback_id: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.req_id = req_id
        self.stream_id = stream_id
        self._sender = sender
        self._budget = budget
        self._feedback_id = feedback_id
        self._sleep = sleep
        self._clock = clock
        self._last_sent_at: float | None = None
        self._lock = asyncio.Lock()
        self.pending: str | None = None
        self.frames_sent = 0
        self.finished = False

    def _body(self, content: str, *, finish: bool) -> dict[str, Any]:
        first = self.frames_sent == 0
        feedback_id = self._feedback_id if first else None
        return stream_reply(
            stream_id=self.stream_id, content=content, finish=finish, feedback_id=feedback_id
        )

    async def _send(self, content: str, *, finish: bool) -> Ack:
        body = self._body(content, finish=finish)
        self._budget.take()
        self._last_sent_at = self._clock()
        self.frames_sent += 1
        return await self._sender.request("aibot_respond_msg", body, req_id=self.req_id)

    def _spacing_wait(self) -> float:
        if self._last_sent_at is None:
            return 0.0
        interval = self._budget.limits.min_update_interval
        return max(0.0, self._last_sent_at + interval - self._clock())

    async def update(self, content: str) -> bool:
        """Show `content` (the whole answer so far) if the budget allows now; True if sent."""
        if self.finished:
            raise RuntimeError("the stream is already finished")
        async with self._lock:
            self.pending = content
            if self._spacing_wait() > 0 or self._budget.wait_seconds(reserve=1) > 0:
                return False
            self.pending = None
            try:
                await self._send(content, finish=False)
            except (AckError, AckTimeout, NotConnected) as exc:
                # An intermediate frame lost is harmless: the next one carries the whole text.
                logger.warning("stream %s update not delivered: %s", self.stream_id, exc)
                self.pending = content
                return False
            return True

    async def finish(self, content: str) -> Ack:
        """Send the final frame, waiting for budget as long as the window needs."""
        async with self._lock:
            self.pending = None
            for attempt in range(FINAL_FRAME_RETRIES + 1):
                # Re-checked after each wait: another stream may have taken the slot meanwhile.
                while (wait := self._budget.wait_seconds(reserve=0)) > 0:
                    await self._sleep(wait)
                try:
                    ack = await self._send(content, finish=True)
                except AckError as exc:
                    if exc.errcode != ERRCODE_RATE_LIMITED or attempt == FINAL_FRAME_RETRIES:
                        raise
                    await self._sleep(self._budget.limits.min_update_interval)
                    continue
                self.finished = True
                return ack
        raise AssertionError("unreachable")  # pragma: no cover

"""Following a turn from the API: its growing text from the channel layer, its end from the row.

The worker publishes each turn's whole text so far to the Channels group the admin's live
view listens to (`apps.bots.streams.stream_publish`); the API listens to the same group.
The final answer (with its sources, or a policy's refusal) is read from the turn's row
once it has ended, so nothing depends on a pub/sub message arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer

from apps.bots.models import Turn
from apps.bots.streams import turn_group
from wecom.display import THINK_CLOSE, THINK_OPEN

# How long to wait for a message before looking at the row again.
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Progress:
    """The turn's text so far, as the model wrote it (reasoning apart from the answer)."""

    reasoning: str
    answer: str


def progress_parse(content: str) -> Progress:
    """Undo the WeCom rendering of a stream's content (`<think>…</think>answer`)."""
    if content.startswith(THINK_OPEN):
        reasoning, closed, answer = content[len(THINK_OPEN) :].partition(THINK_CLOSE)
        if closed:
            return Progress(reasoning=reasoning, answer=answer)
        return Progress(reasoning=reasoning, answer="")
    return Progress(reasoning="", answer=content)


async def _turn_read(turn_id: int) -> Turn:
    return await Turn.objects.select_related("bot").aget(pk=turn_id)


async def turn_follow(*, turn_id: int, until: float) -> AsyncIterator[Progress | Turn]:
    """Progress while the model writes, then the ended turn; stops early at `until`.

    Text published before the first token (the queue notice) is not the answer and is
    skipped. Progress may be skipped or repeated; each is the whole text so far.
    """
    layer: Any = get_channel_layer()
    channel = await layer.new_channel() if layer is not None else ""
    if layer is not None:
        await layer.group_add(turn_group(turn_id), channel)
    try:
        look = True
        started = False
        while True:
            if look:
                turn = await _turn_read(turn_id)
                if turn.is_terminal:
                    yield turn
                    return
                started = turn.first_token_at is not None
                look = False
            left = until - time.time()
            if left <= 0:
                return
            message = await _receive(layer, channel, timeout=min(POLL_SECONDS, left))
            if message is None or message.get("finish"):
                look = True  # silence, or the end: the row says more
                continue
            if not started:
                # Text before the first token is the queue notice; the row tells which.
                turn = await _turn_read(turn_id)
                started = turn.first_token_at is not None
                if turn.is_terminal or not started:
                    look = turn.is_terminal
                    continue
            yield progress_parse(str(message.get("content", "")))
    finally:
        if layer is not None:
            with contextlib.suppress(Exception):  # the group entry expires on its own
                await layer.group_discard(turn_group(turn_id), channel)


async def _receive(layer: Any, channel: str, *, timeout: float) -> dict[str, Any] | None:
    if layer is None:
        await asyncio.sleep(timeout)
        return None
    try:
        return await asyncio.wait_for(layer.receive(channel), timeout=timeout)
    except TimeoutError:
        return None


async def turn_wait(*, turn_id: int, until: float) -> Turn | None:
    """The ended turn, or None when it did not end by `until`."""
    async for item in turn_follow(turn_id=turn_id, until=until):
        if isinstance(item, Turn):
            return item
    return None


class Deltas:
    """What to send next of a turn's growing text, so the pieces add up to the final answer.

    Trailing whitespace is held back (the stored answer is stripped, and a space sent
    early could not be taken back). Text that no longer extends what was sent (a policy's
    refusal replacing a blocked answer) follows it after a blank line.
    """

    def __init__(self) -> None:
        self.reasoning = ""
        self.answer = ""

    def step(self, progress: Progress) -> tuple[str, str]:
        reasoning = self._extend("reasoning", progress.reasoning.strip())
        answer = self._extend("answer", progress.answer.strip())
        return reasoning, answer

    def final(self, *, reasoning: str, answer: str) -> tuple[str, str]:
        reasoning_delta = self._extend("reasoning", reasoning.strip())
        answer = answer.strip()
        if answer.startswith(self.answer):
            return reasoning_delta, self._extend("answer", answer)
        self.answer = answer
        return reasoning_delta, f"\n\n{answer}"

    def _extend(self, name: str, text: str) -> str:
        sent: str = getattr(self, name)
        if not text.startswith(sent) or len(text) == len(sent):
            return ""
        setattr(self, name, text)
        return text[len(sent) :]

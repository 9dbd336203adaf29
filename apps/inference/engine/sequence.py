"""What the batching scheduler tracks per request: the generation a caller iterates, and
the sequence that holds a slot while it runs, with its state named explicitly.
"""

from __future__ import annotations

import enum
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from apps.inference.engine.base import (
    ChatRequest,
    EngineError,
    FinishReason,
    Generation,
    GenerationStats,
)
from apps.inference.engine.sampling import SamplerChain
from apps.inference.engine.text import AnswerText

if TYPE_CHECKING:
    from apps.inference.engine.batching import BatchingEngine


class End:
    """Queue marker: the generation is over (its stats say why)."""


@dataclass(frozen=True)
class Failure:
    """Queue marker: the engine failed this generation; the consumer gets an EngineError."""

    message: str


END = End()


class BatchingGeneration(Generation):
    """A request whose text the scheduler thread pushes into a queue as it is decoded.

    `queue_position` is 1 for the next request to be admitted and 0 once it runs (or is
    over), so the product can show "queued (position N)" while it waits.
    """

    def __init__(
        self,
        engine: BatchingEngine,
        request: ChatRequest,
        messages: list[dict[str, str]],
        prompt: list[int],
        stops: list[str],
    ) -> None:
        self._engine = engine
        self.request = request
        self.messages = messages  # after history truncation
        self.prompt = prompt
        self.stops = stops  # the caller's stop strings plus the chat format's
        self.queue_position = 0
        self.cached_tokens = 0  # prompt tokens reused from a cached or running sequence
        self.prefilled_at: float | None = None  # when the last prompt token was decoded
        self._stats = GenerationStats(prompt_tokens=len(prompt))
        self._pieces: queue.SimpleQueue[str | End | Failure] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._started = False

    @property
    def stats(self) -> GenerationStats:
        return self._stats

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
        self._engine._wake()

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("A generation can be iterated only once")
        self._started = True
        return self._stream()

    def _stream(self) -> Iterator[str]:
        ended = False
        try:
            while True:
                item = self._pieces.get()
                if isinstance(item, End):
                    ended = True
                    return
                if isinstance(item, Failure):
                    ended = True
                    raise EngineError(item.message)
                yield item
        finally:
            # A consumer that stops early (break, close, garbage collection) frees the slot.
            if not ended:
                self.cancel()

    def _interruption(self, now: float) -> FinishReason | None:
        if self._cancelled.is_set():
            return FinishReason.CANCELLED
        deadline = self.request.deadline
        if deadline is not None and now >= deadline:
            return FinishReason.DEADLINE
        return None

    def _emit(self, text: str) -> None:
        if text:
            if self._stats.first_token_at is None:
                self._stats.first_token_at = time.monotonic()
            self._pieces.put(text)

    def _finish(self, reason: FinishReason, failure: str | None = None) -> None:
        self.queue_position = 0
        self._stats.finish_reason = reason
        self._stats.finished_at = time.monotonic()
        self._pieces.put(Failure(failure) if failure is not None else END)


class SequenceState(enum.Enum):
    """Where a sequence is in its life, like the slot states of llama.cpp's server.

    FOLLOWING waits for another sequence (its leader) to decode a shared prompt prefix,
    then copies it; PREFILLING decodes its prompt in chunks; DECODING samples one answer
    token per step; FINISHED has given its slot back.
    """

    FOLLOWING = "following"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    FINISHED = "finished"


@dataclass(eq=False)
class RunningSequence:
    """A generation occupying a slot: its KV stream, sampler chain and answer so far."""

    seq_id: int
    generation: BatchingGeneration
    sampler: SamplerChain
    text: AnswerText
    admitted: int  # admission order; earlier sequences get prompt budget first
    n_past: int = 0  # tokens (prompt, then answer) already in this sequence's KV cache
    pending: int | None = None  # the last sampled token, decoded in the next step
    completion: list[int] = field(default_factory=list)
    batch_row: int = -1  # this step's row with logits, or -1
    leader: RunningSequence | None = None  # a sequence whose prompt prefix this one waits to copy
    leader_tokens: int = 0  # how much of the leader's prefix it will copy
    state: SequenceState = SequenceState.PREFILLING

    def next_token(self) -> int:
        """The token a decoding sequence feeds in next: the one it sampled last step."""
        assert self.pending is not None, "a decoding sequence has sampled a token"
        return self.pending

    def prefilled(self) -> list[int]:
        """The prompt tokens in this sequence's KV cache: the part others may copy.

        Answer tokens are in the cache too, but decoded one at a time; a later prompt that
        contains them decodes them as a chunk, on different kernels (see
        `prefix_cache.chunk_size`), so copying them would make the output depend on what
        happens to be cached.
        """
        return self.generation.prompt[: self.n_past]

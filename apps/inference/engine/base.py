"""The inference contract shared by the Celery tasks and every engine implementation.

Tasks only see these types, so the single-stream engine can be swapped for a
continuous-batching one without touching them.
"""

from __future__ import annotations

import enum
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self


class FinishReason(enum.StrEnum):
    """Why a generation ended; a str enum, so callers comparing with plain strings still work."""

    STOP = "stop"  # an end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens, or the context window, ran out
    CANCELLED = "cancelled"  # the caller cancelled, dropped the iterator, or the engine closed
    DEADLINE = "deadline"  # the request's deadline passed
    ERROR = "error"  # the engine failed this generation


FINISH_REASONS = frozenset(reason.value for reason in FinishReason)


class EngineError(Exception):
    """A problem callers report to people as-is: missing model file, prompt too long, etc."""


class PromptTooLong(EngineError):
    """The last message alone (with the system prompt) does not fit the context window.

    Its own type so the caller can tell the employee to shorten the question instead of
    apologising for a failure: the history was already dropped and it still does not fit.
    """

    def __init__(self, message: str, *, prompt_tokens: int, budget: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.budget = budget


@dataclass(frozen=True)
class ModelSpec:
    """How to load a model; frozen and hashable because it is the engine cache key."""

    path: str
    n_ctx: int = 4096
    n_gpu_layers: int = 0  # -1 offloads every layer when the build supports a GPU
    n_threads: int | None = None
    n_batch: int = 512
    chat_format: str | None = None  # a llama-cpp-python chat_format name
    chat_template: str | None = None  # a Jinja chat template; wins over chat_format
    seed: int = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED, i.e. a random seed
    # Conversations decoded together in one context; 1 = the single-stream engine.
    slots: int = 1
    # Finished prompts kept in the KV cache for reuse (batching engine only).
    prefix_cache_size: int = 0
    # llama.cpp's flash-attention kernels. Off by default: on the CPU the tests pin greedy
    # equality between engines with it off; the GPU bench measures what turning it on gives.
    flash_attn: bool = False


@dataclass(frozen=True)
class RemoteSpec:
    """An OpenAI-compatible server and how hard to use it; hashable, the engine cache key."""

    base_url: str  # up to and including the API version, e.g. "http://gpu-1:8000/v1"
    model: str  # the server's name for the model ("model" in every request)
    api_key: str = field(default="", repr=False)
    concurrency: int = 4  # requests one process keeps in flight; the rest wait in line
    connect_timeout: float = 10.0
    read_timeout: float = 120.0  # longest silence between two streamed chunks
    retries: int = 2  # further attempts, only while nothing was generated yet


EngineSpec = ModelSpec | RemoteSpec


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling knobs; frozen so a request can be shared between threads safely."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class ChatRequest:
    """One conversation to answer; `deadline` is a time.monotonic() value after which we give up."""

    messages: tuple[dict[str, str], ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    deadline: float | None = None


@dataclass
class GenerationStats:
    """What a finished (or running) generation cost; timestamps are time.monotonic() values."""

    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens sampled, an end-of-generation token included
    finish_reason: FinishReason | None = None  # set once finished
    first_token_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class EngineLoad:
    """How busy an engine is right now, for the admin and for backpressure decisions."""

    slots: int
    running: int
    waiting: int
    estimated_wait_seconds: float


class Generation(ABC):
    """A submitted request whose text is pulled by iterating it, and which any thread may cancel."""

    _queue_position: int = 0
    _queue_listener: Callable[[int], None] | None = None

    @property
    def queue_position(self) -> int:
        """1 for the next request to get a slot, N for the Nth in line, 0 once it runs (or ended).

        The engine's scheduler sets it; a watcher hears each change.
        """
        return self._queue_position

    @queue_position.setter
    def queue_position(self, position: int) -> None:
        if position == self._queue_position:
            return
        self._queue_position = position
        listener = self._queue_listener
        if listener is not None:
            listener(position)

    def queue_watch(self, listener: Callable[[int], None] | None) -> None:
        """Hear each new queue position as the scheduler assigns it, instead of polling.

        The listener runs on the engine's scheduler thread, under its lock: it must only
        hand the number over (set an event), never block or call back into the engine.
        """
        self._queue_listener = listener

    @abstractmethod
    def __iter__(self) -> Iterator[str]:
        """Yield decoded text pieces; each is whole characters, never half a UTF-8 sequence."""

    @abstractmethod
    def cancel(self) -> None:
        """Ask the generation to stop; thread-safe, the iterator soon ends with "cancelled"."""

    @property
    @abstractmethod
    def stats(self) -> GenerationStats:
        """Token counts, timings and the finish reason, filled in as generation progresses."""


class PulledGeneration(Generation):
    """A generation produced by `_pieces()` in the consumer's thread as it iterates: iterated
    once, and interrupted by `cancel()`, the engine closing or the request's deadline."""

    _engine: Engine
    _request: ChatRequest
    _cancelled: threading.Event
    _started: bool

    @abstractmethod
    def _pieces(self) -> Iterator[str]:
        """The text pieces, in the caller's thread."""

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("A generation can be iterated only once")
        self._started = True
        return self._pieces()

    def _interruption(self) -> FinishReason | None:
        if self._cancelled.is_set() or self._engine.closed:
            return FinishReason.CANCELLED
        deadline = self._request.deadline
        if deadline is not None and time.monotonic() >= deadline:
            return FinishReason.DEADLINE
        return None


class Engine(ABC):
    """A loaded model that answers chat requests; safe to share between threads."""

    spec: EngineSpec

    @abstractmethod
    def submit(self, request: ChatRequest) -> Generation:
        """Queue a request and return at once; raises EngineError when it can never be answered."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Count tokens the way the model sees them, so callers can budget prompts."""

    @abstractmethod
    def close(self) -> None:
        """Free the model; later submits raise EngineError."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """Whether `close()` has been called."""

    def load(self) -> EngineLoad:
        """Slots in use and requests waiting; engines without a queue report themselves idle."""
        return EngineLoad(slots=1, running=0, waiting=0, estimated_wait_seconds=0.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

"""Remote engine: any OpenAI-compatible server (vLLM, SGLang, llama-server, TGI) behind the
same `Engine` contract as llama.cpp, so a bot moves to a GPU cluster without changing.

The server batches; this side only bounds how many requests one worker process has in
flight (`RemoteSpec.concurrency`), in arrival order, so a waiting turn gets the same
queue-position notice as on a local engine. Reasoning that a server sends apart
(`reasoning_content`) is put back inside ``<think>…</think>``, so the caller splits it
exactly as it splits a local model's output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from apps.inference.engine.base import (
    ChatRequest,
    Engine,
    EngineError,
    EngineLoad,
    FinishReason,
    GenerationStats,
    PulledGeneration,
    RemoteSpec,
)
from apps.inference.engine.think import CLOSE_TAG, OPEN_TAG

logger = logging.getLogger(__name__)

# How often a request waiting for a slot re-checks its cancel flag and deadline.
_QUEUE_POLL_SECONDS = 0.25
# First pause between two attempts; doubled after each failed one.
_RETRY_PAUSE_SECONDS = 0.5
# How fast the answer-duration average behind the wait estimate adapts.
_EWMA_WEIGHT = 0.2
# Status codes worth another attempt: the server is busy or restarting, not refusing us.
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class _RetryableError(Exception):
    """A failure before the first generated text: another attempt cannot repeat anything."""


@dataclass(frozen=True)
class RemoteHealth:
    """What the health check saw: whether the server answered, and the models it offers."""

    ok: bool
    seconds: float
    models: tuple[str, ...] = ()
    error: str = ""


def _client(spec: RemoteSpec, *, connections: int) -> httpx.Client:
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    return httpx.Client(
        base_url=spec.base_url.rstrip("/") + "/",
        headers=headers,
        timeout=httpx.Timeout(spec.read_timeout, connect=spec.connect_timeout),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def remote_health(*, spec: RemoteSpec) -> RemoteHealth:
    """`GET /models`: the server is up, the key is accepted, and it serves `spec.model`."""
    started = time.monotonic()
    try:
        with _client(spec, connections=1) as client:
            response = client.get("models")
        seconds = time.monotonic() - started
        if response.status_code != 200:
            return RemoteHealth(False, seconds, error=f"HTTP {response.status_code}")
        models = tuple(str(item.get("id", "")) for item in response.json().get("data", []))
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return RemoteHealth(False, time.monotonic() - started, error=_describe(exc))
    if models and spec.model not in models:
        # llama.cpp's servers answer to any name; vLLM and SGLang refuse an unknown one.
        error = f"the server does not list the model {spec.model!r}"
        return RemoteHealth(False, seconds, models, error)
    return RemoteHealth(True, seconds, models)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RemoteEngine(Engine):
    """One HTTP connection pool per server and process, shared by every task thread."""

    spec: RemoteSpec

    def __init__(self, spec: RemoteSpec) -> None:
        if spec.concurrency < 1:
            raise EngineError(f"concurrency must be at least 1, got {spec.concurrency}")
        self.spec = spec
        self._client = _client(spec, connections=spec.concurrency + 1)
        self._lock = threading.Condition()
        self._running = 0
        self._waiting: deque[RemoteGeneration] = deque()
        self._answer_seconds: float | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, request: ChatRequest) -> RemoteGeneration:
        """Take a place in line now, so the queue position is known before the first piece."""
        self._check_open()
        if request.sampling.max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, got {request.sampling.max_tokens}")
        generation = RemoteGeneration(self, request)
        with self._lock:
            self._waiting.append(generation)
            self._admit()
        return generation

    def count_tokens(self, text: str) -> int:
        """An estimate (the tokenizer lives on the server): a CJK character is about one
        token, other text about four characters per token."""
        self._check_open()
        wide = sum(1 for char in text if ord(char) >= 0x2E80)
        return wide + (len(text) - wide + 3) // 4

    def load(self) -> EngineLoad:
        with self._lock:
            running, waiting, average = self._running, len(self._waiting), self._answer_seconds
        rounds = waiting // self.spec.concurrency + (1 if running >= self.spec.concurrency else 0)
        return EngineLoad(
            slots=self.spec.concurrency,
            running=running,
            waiting=waiting,
            estimated_wait_seconds=rounds * (average or 0.0),
        )

    def close(self) -> None:
        """Cancel every request in flight or in line, then close the connection pool."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            generations = list(self._waiting)
            self._lock.notify_all()
        for generation in generations:
            generation.cancel()
        self._client.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"The engine for {self.spec.base_url} is closed")

    def _admit(self) -> None:
        """Give free slots to the oldest waiters and renumber the rest; call with the lock."""
        while self._running < self.spec.concurrency and self._waiting:
            generation = self._waiting.popleft()
            generation.admitted = True
            generation.queue_position = 0
            self._running += 1
        for position, generation in enumerate(self._waiting, start=1):
            generation.queue_position = position
        self._lock.notify_all()

    def _leave(self, generation: RemoteGeneration, *, seconds: float | None) -> None:
        with self._lock:
            if generation.admitted:
                self._running -= 1
                generation.admitted = False
            elif generation in self._waiting:
                self._waiting.remove(generation)
            if seconds is not None:
                previous = self._answer_seconds
                self._answer_seconds = (
                    seconds if previous is None else previous + _EWMA_WEIGHT * (seconds - previous)
                )
            self._admit()


class RemoteGeneration(PulledGeneration):
    """A request streamed over SSE while, and only while, the consumer iterates.

    `cancel()` shuts the connection's socket down, which wakes a read blocked on a silent
    server and tells the server to stop generating (llama.cpp's and vLLM's servers abort
    a request whose client went away).
    """

    _engine: RemoteEngine

    def __init__(self, engine: RemoteEngine, request: ChatRequest) -> None:
        self._engine = engine
        self._request = request
        self._stats = GenerationStats()
        self._cancelled = threading.Event()
        self._socket: socket.socket | None = None
        self._socket_lock = threading.Lock()
        self._started = False
        self.admitted = False  # holds one of the engine's slots; guarded by the engine's lock
        self.attempts = 0

    @property
    def stats(self) -> GenerationStats:
        return self._stats

    def cancel(self) -> None:
        self._cancelled.set()
        with self._engine._lock:
            self._engine._lock.notify_all()
        self._disconnect()

    def _finish(self, reason: FinishReason) -> None:
        if self._stats.finish_reason is None:
            self._stats.finish_reason = reason
            self._stats.finished_at = time.monotonic()

    def _disconnect(self) -> None:
        with self._socket_lock:
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)

    def _wait_for_slot(self) -> bool:
        lock = self._engine._lock
        with lock:
            while not self.admitted:
                if reason := self._interruption():
                    self._finish(reason)
                    return False
                lock.wait(_QUEUE_POLL_SECONDS)
        return True

    def _pieces(self) -> Iterator[str]:
        started = time.monotonic()
        try:
            if not self._wait_for_slot():
                return
            yield from self._attempts()
        finally:
            # Only answers that ran their course teach the wait estimate.
            finished = self._stats.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
            self._engine._leave(self, seconds=time.monotonic() - started if finished else None)
            self._finish(FinishReason.CANCELLED)  # the consumer dropped the iterator

    def _attempts(self) -> Iterator[str]:
        pause = _RETRY_PAUSE_SECONDS
        while True:
            self.attempts += 1
            try:
                yield from self._stream()
                return
            except EngineError:
                self._finish(FinishReason.ERROR)
                raise
            except _RetryableError as exc:
                if reason := self._interruption():
                    self._finish(reason)
                    return
                if self.attempts > self._engine.spec.retries:
                    self._finish(FinishReason.ERROR)
                    raise EngineError(
                        f"{self._engine.spec.base_url} failed {self.attempts} times: {exc}"
                    ) from exc
                logger.warning("remote engine %s: %s; retrying", self._engine.spec.base_url, exc)
                if self._cancelled.wait(pause):
                    self._finish(FinishReason.CANCELLED)
                    return
                pause *= 2

    def _body(self) -> dict[str, Any]:
        sampling = self._request.sampling
        body: dict[str, Any] = {
            "model": self._engine.spec.model,
            "messages": list(self._request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    def _read_timeout(self) -> float:
        """A silent server is given up on at the deadline, not only after `read_timeout`."""
        timeout = self._engine.spec.read_timeout
        if self._request.deadline is not None:
            timeout = min(timeout, max(0.05, self._request.deadline - time.monotonic()))
        return timeout

    def _stream(self) -> Iterator[str]:
        """One attempt; raises _RetryableError only while nothing was yielded."""
        spec, produced = self._engine.spec, False
        timeout = httpx.Timeout(self._read_timeout(), connect=spec.connect_timeout)
        translator = _DeltaTranslator()
        try:
            with self._engine._client.stream(
                "POST", "chat/completions", json=self._body(), timeout=timeout
            ) as response:
                self._hold_socket(response)
                if reason := self._interruption():  # cancelled while connecting
                    self._finish(reason)
                    return
                _check_status(response)
                for line in response.iter_lines():
                    if reason := self._interruption():
                        self._finish(reason)
                        return
                    chunk = _sse_data(line)
                    if chunk is None:
                        continue
                    if chunk == "[DONE]":
                        break
                    for piece in self._chunk_pieces(chunk, translator):
                        if self._stats.first_token_at is None:
                            self._stats.first_token_at = time.monotonic()
                        produced = True
                        yield piece
        except _RetryableError as exc:
            if produced:
                self._finish(FinishReason.ERROR)
                raise EngineError(f"{spec.base_url} broke off the answer: {exc}") from exc
            raise
        except httpx.HTTPError as exc:
            if reason := self._interruption():
                self._finish(reason)  # our own cancel or deadline closed the connection
                return
            if produced:
                self._finish(FinishReason.ERROR)
                raise EngineError(
                    f"{spec.base_url} broke off the answer: {_describe(exc)}"
                ) from exc
            raise _RetryableError(_describe(exc)) from exc
        finally:
            with self._socket_lock:
                self._socket = None
        self._finish(translator.finish_reason or FinishReason.STOP)

    def _hold_socket(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._socket_lock:
            self._socket = sock if isinstance(sock, socket.socket) else None

    def _chunk_pieces(self, data: str, translator: _DeltaTranslator) -> list[str]:
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise _RetryableError(f"not JSON in the stream: {data[:100]!r}") from exc
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk:
            raise EngineError(f"{self._engine.spec.base_url}: {chunk['error']}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._stats.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self._stats.completion_tokens = int(usage.get("completion_tokens") or 0)
            translator.usage_seen = True
        pieces = translator.feed(chunk)
        if pieces and not translator.usage_seen:
            # Servers without usage in the stream send about one token per chunk.
            self._stats.completion_tokens += 1
        return pieces


def _sse_data(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for comments, events and blank lines."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


def _check_status(response: httpx.Response) -> None:
    if response.status_code == 200:
        return
    response.read()
    message = f"HTTP {response.status_code}: {response.text[:300]}"
    if response.status_code in _RETRYABLE_STATUS:
        raise _RetryableError(message)
    raise EngineError(f"{response.request.url} refused the request: {message}")


class _DeltaTranslator:
    """Turns streamed chat-completion chunks into text pieces in the local engine's shape:
    reasoning sent apart (`reasoning_content`, vLLM's newer `reasoning`) goes inside
    ``<think>…</think>``, so the caller's `ThinkSplitter` sees what a local model writes."""

    def __init__(self) -> None:
        self.in_reasoning = False
        self.finish_reason: FinishReason | None = None
        self.usage_seen = False

    def feed(self, chunk: dict[str, Any]) -> list[str]:
        pieces: list[str] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            content = delta.get("content")
            if reasoning:
                pieces.append(reasoning if self.in_reasoning else OPEN_TAG + reasoning)
                self.in_reasoning = True
            if content:
                pieces.append(CLOSE_TAG + content if self.in_reasoning else content)
                self.in_reasoning = False
            raw = choice.get("finish_reason")
            if raw:
                self.finish_reason = FinishReason.LENGTH if raw == "length" else FinishReason.STOP
        return pieces

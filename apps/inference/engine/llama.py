"""Single-stream engine: one llama.cpp context, one generation at a time.

Generation runs in the consumer's thread while it iterates, which keeps this engine
simple; a lock on the context serialises concurrent generations, so a second submitter
waits (still cancellable, still bound by its deadline) until the first one finishes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import llama_cpp
from llama_cpp import llama_chat_format

from apps.inference.engine.base import (
    ChatRequest,
    Engine,
    EngineError,
    EngineLoad,
    FinishReason,
    GenerationStats,
    ModelSpec,
    PulledGeneration,
)
from apps.inference.engine.prompts import ChatPrompts

logger = logging.getLogger(__name__)

# How often a generation queued behind another one re-checks its cancel flag and deadline.
_QUEUE_POLL_SECONDS = 0.05


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build can offload layers; without it n_gpu_layers is ignored."""
    return bool(llama_cpp.llama_supports_gpu_offload())


class LlamaEngine(Engine):
    """One `llama_cpp.Llama` shared by every thread of a worker process.

    Only one generation uses the context at a time: a generation holds the lock from its
    first piece until it finishes, is cancelled, or its iterator is closed or collected;
    `cancel()` acts when iteration resumes, so a consumer that stops early (`break`) must
    not keep the iterator alive.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec: ModelSpec = spec
        self.pid = os.getpid()  # the process that owns the llama.cpp (and GPU) state
        if not os.path.isfile(spec.path):
            raise EngineError(f"Model file not found: {spec.path}")
        if spec.n_gpu_layers and not gpu_offload_supported():
            logger.warning(
                "n_gpu_layers=%s ignored for %s: this llama.cpp build has no GPU support",
                spec.n_gpu_layers,
                spec.path,
            )
        try:
            self._llama = llama_cpp.Llama(
                model_path=spec.path,
                n_ctx=spec.n_ctx,
                n_gpu_layers=spec.n_gpu_layers,
                # One knob for both phases: prompt processing and generation.
                n_threads=spec.n_threads,
                n_threads_batch=spec.n_threads,
                n_batch=spec.n_batch,
                flash_attn=spec.flash_attn,
                chat_format=None if spec.chat_template else spec.chat_format,
                seed=spec.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"Could not load model {spec.path}: {exc}") from exc
        try:
            self._prompts = ChatPrompts(spec, self._llama, self._llama.n_ctx())
        except EngineError:
            self._llama.close()
            raise
        # Generation goes through the same formatter we count prompt tokens with.
        self._llama.chat_handler = llama_chat_format.chat_formatter_to_chat_completion_handler(
            self._prompts.formatter
        )
        self._lock = threading.Lock()
        self._closed = False
        self._waiting = 0  # generations blocked on _lock, guarded by _waiting_lock
        self._waiting_lock = threading.Lock()

    @property
    def n_ctx(self) -> int:
        return self._llama.n_ctx()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, request: ChatRequest) -> LlamaGeneration:
        """Fit the conversation into the context now, so overflows raise here, not mid-stream."""
        self._check_open()
        max_tokens = request.sampling.max_tokens
        if max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, got {max_tokens}")
        messages, prompt_tokens = self._prompts.fit(request.messages, max_tokens)
        return LlamaGeneration(self, request, messages, prompt_tokens)

    def count_tokens(self, text: str) -> int:
        self._check_open()
        return self._prompts.count_tokens(text)

    def render_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """The exact prompt text the model will see, for debugging templates in the admin."""
        self._check_open()
        return self._prompts.render(messages)

    def load(self) -> EngineLoad:
        with self._waiting_lock:
            waiting = self._waiting
        return EngineLoad(
            slots=1, running=int(self._lock.locked()), waiting=waiting, estimated_wait_seconds=0.0
        )

    def close(self) -> None:
        """Stop the running generation at its next token, then free the model."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._llama.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"The engine for {self.spec.path} is closed")

    def _prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Count the prompt exactly as llama-cpp-python's chat handler tokenizes it."""
        return self._prompts.prompt_tokens(messages)


class LlamaGeneration(PulledGeneration):
    """A request whose tokens are decoded while, and only while, the consumer iterates."""

    _engine: LlamaEngine

    def __init__(
        self,
        engine: LlamaEngine,
        request: ChatRequest,
        messages: list[dict[str, str]],
        prompt_tokens: int,
    ) -> None:
        self._engine = engine
        self._request = request
        self.messages = messages  # after history truncation
        self._stats = GenerationStats(prompt_tokens=prompt_tokens)
        self._cancelled = threading.Event()
        self._started = False

    @property
    def stats(self) -> GenerationStats:
        return self._stats

    def cancel(self) -> None:
        self._cancelled.set()

    def _finish(self, reason: FinishReason) -> None:
        self._stats.finish_reason = reason
        self._stats.finished_at = time.monotonic()

    def _acquire_context(self) -> bool:
        """Wait for the context; give up (and finish) if cancelled or past the deadline."""
        engine = self._engine
        lock = engine._lock
        with engine._waiting_lock:
            engine._waiting += 1
        try:
            while not lock.acquire(timeout=_QUEUE_POLL_SECONDS):
                if reason := self._interruption():
                    self._finish(reason)
                    return False
        finally:
            with engine._waiting_lock:
                engine._waiting -= 1
        if reason := self._interruption():
            lock.release()
            self._finish(reason)
            return False
        return True

    def _pieces(self) -> Iterator[str]:
        if not self._acquire_context():
            return
        try:
            yield from self._decode()
        finally:
            self._engine._lock.release()

    def _decode(self) -> Iterator[str]:
        llama = self._engine._llama
        sampling = self._request.sampling
        # Start from an empty context so an answer never depends on the previous request.
        llama.reset()
        try:
            stream: Iterator[Any] = llama.create_chat_completion(  # type: ignore[assignment]
                messages=self.messages,  # type: ignore[arg-type]
                stream=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                min_p=sampling.min_p,
                repeat_penalty=sampling.repeat_penalty,
                max_tokens=sampling.max_tokens,
                stop=list(sampling.stop),
                seed=sampling.seed,
            )
        except (RuntimeError, ValueError) as exc:
            self._finish(FinishReason.ERROR)
            raise EngineError(f"Generation failed: {exc}") from exc
        finish_reason: FinishReason | None = None
        sampled = False
        try:
            while finish_reason is None:
                if reason := self._interruption():
                    finish_reason = reason
                    break
                chunk = next(stream, None)
                if chunk is None:
                    finish_reason = FinishReason.STOP
                    break
                sampled = True  # llama-cpp-python sends nothing before the first sampled token
                choice = chunk["choices"][0]
                text = choice["delta"].get("content")
                if text:
                    if self._stats.first_token_at is None:
                        self._stats.first_token_at = time.monotonic()
                    yield text
                raw_reason = choice["finish_reason"]  # "stop", "length" or None
                finish_reason = None if raw_reason is None else FinishReason(raw_reason)
        except (RuntimeError, ValueError) as exc:
            finish_reason = FinishReason.ERROR
            raise EngineError(f"Generation failed: {exc}") from exc
        finally:
            stream.close()  # type: ignore[attr-defined]
            if sampled:
                # n_tokens counts evaluated tokens; the last sampled one is never evaluated.
                self._stats.completion_tokens = llama.n_tokens - self._stats.prompt_tokens + 1
            # No reason here means the consumer closed or dropped the iterator mid-stream.
            self._finish(finish_reason or FinishReason.CANCELLED)

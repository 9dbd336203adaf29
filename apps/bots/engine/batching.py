"""Continuous batching: many conversations decoded together in one llama.cpp context.

One scheduler thread owns the context. Each step it retires finished, cancelled and
expired sequences, admits queued requests into free slots (warm-starting them from cached
or running sequences that share a prompt prefix), decodes the next token of every running
sequence in one `llama_decode` call, then advances prefilling sequences by bounded prompt
chunks, so a long prompt never stalls the streams already running.

Answers do not depend on what else is batched or cached: every sequence id is its own KV
stream (`kv_unified=False`), laid out as in a single-sequence context, and prompt tokens
are always decoded in chunks of two or more while answer tokens go one per sequence, as in
llama-cpp-python's own loop (see `_chunk_size`). Greedy output thus matches `LlamaEngine`.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import math
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import llama_cpp

from apps.bots.engine.base import (
    ChatRequest,
    Engine,
    EngineError,
    EngineLoad,
    Generation,
    GenerationStats,
    ModelSpec,
)
from apps.bots.engine.llama import LlamaEngine, gpu_offload_supported
from apps.bots.engine.sampling import SamplerChain, SeedSequence

logger = logging.getLogger(__name__)

DEFAULT_SLOTS = 4
DEFAULT_PREFIX_CACHE_SIZE = 4
# Reusing a prefix copies a whole KV stream (every cell, used or not), which only beats
# recomputing the prefix when it is more than a handful of tokens.
MIN_PREFIX_REUSE = 16
# How fast the step-time and answer-length averages behind `estimated_wait_seconds` adapt.
_EWMA_WEIGHT = 0.2
# llama.cpp pads each sequence's context window to a multiple of this.
_CTX_PAD = 256


class _End:
    """Queue marker: the generation is over (its stats say why)."""


@dataclass(frozen=True)
class _Failure:
    """Queue marker: the engine failed this generation; the consumer gets an EngineError."""

    message: str


_END = _End()


@dataclass(frozen=True)
class BatchingSnapshot:
    """What the scheduler holds right now, for health pages, backpressure and tests."""

    slots: int
    running: int
    waiting: int
    cached_prefixes: int
    kv_cells_in_use: int


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
        self._pieces: queue.SimpleQueue[str | _End | _Failure] = queue.SimpleQueue()
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
                if isinstance(item, _End):
                    ended = True
                    return
                if isinstance(item, _Failure):
                    ended = True
                    raise EngineError(item.message)
                yield item
        finally:
            # A consumer that stops early (break, close, garbage collection) frees the slot.
            if not ended:
                self.cancel()

    def _interruption(self, now: float) -> str | None:
        if self._cancelled.is_set():
            return "cancelled"
        deadline = self.request.deadline
        if deadline is not None and now >= deadline:
            return "deadline"
        return None

    def _emit(self, text: str) -> None:
        if text:
            if self._stats.first_token_at is None:
                self._stats.first_token_at = time.monotonic()
            self._pieces.put(text)

    def _finish(self, reason: str, failure: str | None = None) -> None:
        self.queue_position = 0
        self._stats.finish_reason = reason
        self._stats.finished_at = time.monotonic()
        self._pieces.put(_Failure(failure) if failure is not None else _END)


class _AnswerText:
    """An answer's bytes, released as whole UTF-8 characters that cannot start a stop string.

    It follows llama-cpp-python's `_create_completion` so both engines return the same text:
    a token ending inside a multibyte character is held back (and not checked against stop
    strings or max_tokens until the character completes), and the answer is cut at the
    first stop string.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop.encode("utf-8") for stop in stops if stop]
        self._longest_stop = max((len(stop) for stop in self._stops), default=0)
        self._data = bytearray()
        self._released = 0
        self._end: int | None = None  # where a stop string begins, once found
        self._multibyte_fix = 0

    def add(self, piece: bytes) -> bool:
        """Append one token's bytes; False while they leave a multibyte character open."""
        self._data += piece
        # llama-cpp-python's check, verbatim, so a held token behaves identically.
        for index, char in enumerate(self._data[-3:]):
            k = 3 - index
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    self._multibyte_fix = num - k
        if self._multibyte_fix > 0:
            self._multibyte_fix -= 1
            return False
        return True

    def find_stop(self) -> bool:
        """Whether the text now contains a stop string; the answer then ends before it."""
        if not self._stops:
            return False
        start = max(0, self._released - self._longest_stop)
        found = [self._data.find(stop, start) for stop in self._stops]
        hits = [index for index in found if index >= 0]
        if not hits:
            return False
        self._end = min(hits)
        return True

    def release(self) -> str:
        """The text that is safe to stream now."""
        end = len(self._data) - self._stop_prefix_length()
        end = _complete_utf8_end(self._data, self._released, end)
        if end <= self._released:
            return ""
        text = self._data[self._released : end].decode("utf-8", errors="ignore")
        self._released = end
        return text

    def finish(self) -> str:
        """Everything not streamed yet, up to a stop string; an unfinished character is dropped."""
        end = len(self._data) if self._end is None else self._end
        text = self._data[self._released : end].decode("utf-8", errors="ignore")
        self._released = max(self._released, end)
        return text

    def _stop_prefix_length(self) -> int:
        """Length of the longest unreleased suffix that a stop string starts with."""
        pending = bytes(self._data[self._released :])
        held = 0
        for stop in self._stops:
            for length in range(min(len(stop), len(pending)), held, -1):
                if pending.endswith(stop[:length]):
                    held = length
                    break
        return held


def _complete_utf8_end(data: bytearray, start: int, end: int) -> int:
    """Move `end` back so that data[start:end] does not end inside a multibyte character."""
    for back in range(1, min(4, end - start) + 1):
        byte = data[end - back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end - back if needed > back else end
        return end
    return end


@dataclass(eq=False)
class _Sequence:
    """A generation occupying a slot: its KV stream, sampler chain and answer so far."""

    seq_id: int
    generation: BatchingGeneration
    sampler: SamplerChain
    text: _AnswerText
    admitted: int  # admission order; earlier sequences get prompt budget first
    n_past: int = 0  # tokens (prompt, then answer) already in this sequence's KV cache
    pending: int | None = None  # the last sampled token, decoded in the next step
    completion: list[int] = field(default_factory=list)
    batch_row: int = -1  # this step's row with logits, or -1
    leader: _Sequence | None = None  # a sequence whose prompt prefix this one waits to copy
    leader_tokens: int = 0  # how much of the leader's prefix it will copy

    @property
    def prefilling(self) -> bool:
        return self.pending is None

    def prefilled(self) -> list[int]:
        """The prompt tokens in this sequence's KV cache: the part others may copy.

        Answer tokens are in the cache too, but decoded one at a time; a later prompt that
        contains them decodes them as a chunk, on different kernels (see `_chunk_size`), so
        copying them would make the output depend on what happens to be cached.
        """
        return self.generation.prompt[: self.n_past]


@dataclass
class _CachedPrefix:
    seq_id: int
    tokens: tuple[int, ...] = ()
    last_used: int = 0


class _PrefixCache:
    """Which token prefixes the cache sequence ids hold: a fixed set of ids, evicted LRU."""

    def __init__(self, seq_ids: Sequence[int]) -> None:
        self._entries = [_CachedPrefix(seq_id) for seq_id in seq_ids]
        self._clock = itertools.count(1)

    def __len__(self) -> int:
        return sum(1 for entry in self._entries if entry.tokens)

    def best_match(self, prompt: Sequence[int]) -> tuple[_CachedPrefix | None, int]:
        best: _CachedPrefix | None = None
        best_length = 0
        for entry in self._entries:
            length = _common_prefix_length(entry.tokens, prompt)
            if length > best_length:
                best, best_length = entry, length
        return best, best_length

    def touch(self, entry: _CachedPrefix) -> None:
        entry.last_used = next(self._clock)

    def place_for(self, tokens: Sequence[int]) -> _CachedPrefix | None:
        """The entry to overwrite with `tokens`; None when a cached entry already covers them.

        An entry that is a prefix of `tokens` (the previous turn of the same conversation,
        or the bare system prompt) is replaced, since the new one serves every lookup the
        old one could; otherwise a free id, otherwise the least recently used one.
        """
        for entry in self._entries:
            if entry.tokens and _common_prefix_length(entry.tokens, tokens) == len(tokens):
                self.touch(entry)
                return None
        for entry in self._entries:
            if entry.tokens and _common_prefix_length(entry.tokens, tokens) == len(entry.tokens):
                return entry
        return min(self._entries, key=lambda entry: (bool(entry.tokens), entry.last_used))

    def store(self, entry: _CachedPrefix, tokens: Sequence[int]) -> None:
        entry.tokens = tuple(tokens)
        self.touch(entry)


def _chunk_size(remaining: int, limit: int) -> int:
    """How many of `remaining` prompt tokens to decode in one chunk of about `limit`.

    On llama.cpp's CPU kernels a token decoded alone in its stream (as every answer token
    is) gets slightly different numbers from one decoded in a chunk of two or more (as a
    prompt is), while chunks of any size of two or more agree exactly. So prompt chunks
    are never a single token, nor leave a single token behind, unless the whole prompt is
    one token; that keeps answers independent of how prompts were chunked or batched.
    """
    limit = max(limit, 2)
    if remaining <= limit:
        return remaining
    if remaining - limit == 1:
        return limit - 1 if limit > 2 else remaining
    return limit


def _reusable_length(prompt: Sequence[int]) -> int:
    """How much of `prompt` may come from another sequence's cache: all but two tokens.

    The last prompt token's logits are needed, and it must be decoded in a chunk of at
    least two (see `_chunk_size`).
    """
    return max(0, len(prompt) - 2)


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


class _ChatPrompts(LlamaEngine):
    """LlamaEngine's prompt rendering, token counting and history truncation, minus its context.

    Inheriting rather than copying keeps the batching engine's prompts token-for-token
    identical to the single-stream engine's: same chat-format detection, same template,
    same truncation rules. Only the prompt methods are used; LlamaEngine.__init__ (which
    would build a second full-size context) is deliberately skipped.
    """

    def __init__(self, spec: ModelSpec, llama: llama_cpp.Llama, n_ctx: int) -> None:
        self.spec = spec
        self._llama = llama
        self._window = n_ctx
        self._closed = False
        self._formatter = self._chat_formatter()

    @property
    def n_ctx(self) -> int:
        return self._window

    def encode(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[str]]:
        """Prompt tokens and the format's stop strings, as llama-cpp-python's handler makes them."""
        result = self._format(messages)
        tokens = self._llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        return tokens, stops


class BatchingEngine(Engine):
    """Decodes up to `slots` conversations at once in one llama.cpp context.

    `submit()` is thread-safe and returns at once; the scheduler thread does all llama.cpp
    work. Requests beyond `slots` wait in FIFO order. The prompts of up to
    `prefix_cache_size` finished requests stay cached in extra sequence ids (LRU), so a
    conversation's next turn, or another conversation with the same system prompt, starts
    from their KV cache; each cache id costs a full context window of KV memory.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        slots: int = DEFAULT_SLOTS,
        prefix_cache_size: int = DEFAULT_PREFIX_CACHE_SIZE,
    ) -> None:
        if slots < 1:
            raise EngineError(f"A batching engine needs at least one slot, got {slots}")
        if prefix_cache_size < 0:
            raise EngineError(f"prefix_cache_size cannot be negative, got {prefix_cache_size}")
        if slots > spec.n_batch:
            raise EngineError(f"slots ({slots}) cannot exceed n_batch ({spec.n_batch})")
        n_seq = slots + prefix_cache_size
        if n_seq > llama_cpp.llama_max_parallel_sequences():
            raise EngineError(
                f"slots + prefix_cache_size = {n_seq} exceeds llama.cpp's limit of "
                f"{llama_cpp.llama_max_parallel_sequences()} sequences"
            )
        self.spec = spec
        self.slots = slots
        self.prefix_cache_size = prefix_cache_size
        self.pid = os.getpid()
        if not os.path.isfile(spec.path):
            raise EngineError(f"Model file not found: {spec.path}")
        if spec.n_gpu_layers and not gpu_offload_supported():
            logger.warning(
                "n_gpu_layers=%s ignored for %s: this llama.cpp build has no GPU support",
                spec.n_gpu_layers,
                spec.path,
            )
        self._closed = False
        self._broken: str | None = None
        self._ctx: llama_cpp.llama_context_p | None = None
        self._batch: llama_cpp.llama_batch | None = None
        try:
            # The Llama object loads the weights once and provides the tokenizer and chat
            # format; its own context stays tiny and unused. Decoding uses our context below.
            self._llama = llama_cpp.Llama(
                model_path=spec.path,
                n_ctx=_CTX_PAD,
                n_batch=8,
                n_ubatch=8,
                n_gpu_layers=spec.n_gpu_layers,
                n_threads=1,
                chat_format=None if spec.chat_template else spec.chat_format,
                seed=spec.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"Could not load model {spec.path}: {exc}") from exc
        try:
            self._open_context(n_seq)
            self._prompts = _ChatPrompts(spec, self._llama, self.n_ctx)
        except BaseException:
            self._free_context()
            self._free_llama()
            raise
        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._vocab = vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self._pieces: dict[int, bytes] = {}
        self._seeds = SeedSequence(spec.seed)
        self._cache = _PrefixCache(range(slots, n_seq))
        self._running: list[_Sequence | None] = [None] * slots
        self._admissions = itertools.count()
        # _cond guards the waiting queue, the closing flag and the published estimates.
        self._cond = threading.Condition()
        self._waiting: deque[BatchingGeneration] = deque()
        self._slot_steps_left: list[float] = [0.0] * slots
        self._step_seconds: float | None = None
        self._answer_tokens: float | None = None
        # _ctx_lock is held by the scheduler around every use of the llama.cpp context.
        self._ctx_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._schedule, name=f"llama-batching-{os.path.basename(spec.path)}"
        )
        self._thread.daemon = True
        self._thread.start()

    # -- public API -------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        """Each sequence's context window, what prompt budgeting and truncation work against."""
        return self._window

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, request: ChatRequest) -> BatchingGeneration:
        """Fit the conversation now, so overflows raise here; then queue it for the scheduler."""
        self._check_open()
        max_tokens = request.sampling.max_tokens
        if max_tokens < 1:
            raise EngineError(f"max_tokens must be at least 1, got {max_tokens}")
        messages, _ = self._prompts._fit_prompt(request.messages, max_tokens)
        prompt, format_stops = self._prompts.encode(messages)
        stops = [*request.sampling.stop, *format_stops]
        generation = BatchingGeneration(self, request, messages, prompt, stops)
        with self._cond:
            self._check_open()
            self._waiting.append(generation)
            generation.queue_position = len(self._waiting)
            self._cond.notify()
        return generation

    def count_tokens(self, text: str) -> int:
        self._check_open()
        return self._prompts.count_tokens(text)

    def render_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """The exact prompt text the model will see, for debugging templates in the admin."""
        self._check_open()
        return self._prompts.render_prompt(messages)

    def queue_depth(self) -> int:
        """Requests submitted but not yet given a slot."""
        with self._cond:
            return len(self._waiting)

    def estimated_wait_seconds(self) -> float:
        """Roughly how long a request submitted now would wait for a slot.

        Replays the queue against the slots' expected remaining steps (prompt chunks left,
        then the average answer length capped by max_tokens), at the average step time.
        """
        with self._cond:
            steps_left = list(self._slot_steps_left)
            queued = [self._expected_steps(generation) for generation in self._waiting]
            step_seconds = self._step_seconds
        if step_seconds is None:
            step_seconds = 0.0
        heapq.heapify(steps_left)
        for steps in queued:
            heapq.heappush(steps_left, heapq.heappop(steps_left) + steps)
        return steps_left[0] * step_seconds

    def load(self) -> EngineLoad:
        with self._cond:
            waiting = len(self._waiting)
        return EngineLoad(
            slots=self.slots,
            running=sum(1 for sequence in self._running if sequence is not None),
            waiting=waiting,
            estimated_wait_seconds=self.estimated_wait_seconds(),
        )

    def snapshot(self) -> BatchingSnapshot:
        """Counts taken between two decode steps; waits for the current step to finish."""
        with self._ctx_lock:
            cells = self._kv_cells_in_use() if self._ctx is not None else 0
            running = sum(1 for sequence in self._running if sequence is not None)
            cached = len(self._cache)
        return BatchingSnapshot(
            slots=self.slots,
            running=running,
            waiting=self.queue_depth(),
            cached_prefixes=cached,
            kv_cells_in_use=cells,
        )

    def close(self) -> None:
        """Cancel everything queued or running, stop the scheduler, then free the model."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self._ctx_lock:
            self._free_context()
        self._free_llama()

    # -- setup ------------------------------------------------------------------------------

    def _open_context(self, n_seq: int) -> None:
        spec = self.spec
        params = llama_cpp.llama_context_default_params()
        window = math.ceil(spec.n_ctx / _CTX_PAD) * _CTX_PAD
        params.n_ctx = window * n_seq
        params.n_batch = spec.n_batch
        params.n_ubatch = min(spec.n_batch, 512)  # llama-cpp-python's default n_ubatch cap
        params.n_seq_max = n_seq
        params.kv_unified = False
        # Same thread defaults and attention kernel as llama_cpp.Llama, so numerics match.
        cores = multiprocessing.cpu_count()
        params.n_threads = spec.n_threads or max(cores // 2, 1)
        params.n_threads_batch = spec.n_threads or cores
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if spec.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._llama.model, params)
        if not ctx:
            raise EngineError(
                f"Could not create a context of {params.n_ctx} tokens "
                f"({n_seq} sequences of {window}) for {spec.path}"
            )
        self._ctx = ctx
        self._window = llama_cpp.llama_n_ctx_seq(ctx)
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._n_batch = llama_cpp.llama_n_batch(ctx)
        self._n_ubatch = llama_cpp.llama_n_ubatch(ctx)
        self._batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)

    def _free_context(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def _free_llama(self) -> None:
        llama = getattr(self, "_llama", None)
        if llama is not None:
            llama.close()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"The engine for {self.spec.path} is closed")
        if self._broken is not None:
            raise EngineError(f"The engine for {self.spec.path} failed: {self._broken}")

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- scheduler thread -------------------------------------------------------------------

    def _schedule(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._closed and not self._waiting and not self._any_running():
                        self._cond.wait()
                    if self._closed:
                        break
                with self._ctx_lock:
                    self._step()
        except BaseException as exc:
            logger.exception("The batching scheduler for %s failed", self.spec.path)
            self._broken = repr(exc)
        finally:
            with self._ctx_lock:
                self._shutdown()

    def _any_running(self) -> bool:
        return any(sequence is not None for sequence in self._running)

    def _step(self) -> None:
        """One scheduler iteration: retire, admit, prefill prompt chunks, decode.

        Each prompt chunk gets its own llama_decode call, then the next token of every
        running sequence goes through one call together, one token each. Prefill is
        compute-bound, so the extra calls cost little, and keeping the two apart keeps
        every token on the same kernels as in a single-sequence context (see
        `_chunk_size`). Chunks go first so that a new request's first token does not wait
        for the running sequences' decode; sequences whose prompt completes join the
        decode call of the same step.
        """
        now = time.monotonic()
        for sequence in self._active():
            if reason := sequence.generation._interruption(now):
                self._retire(sequence, reason)
        self._admit(now)
        self._release_followers()
        self._compact()
        active = self._active()
        plan = self._plan_prefill(active, sum(1 for s in active if not s.prefilling))
        if not plan and all(sequence.prefilling for sequence in active):
            self._publish_estimates(None)
            return
        started = time.monotonic()
        for sequence, length in plan:
            # Prefill calls can add up to a long step: honour cancellations between them.
            if reason := sequence.generation._interruption(time.monotonic()):
                self._retire(sequence, reason)
                continue
            start = sequence.n_past
            chunk = sequence.generation.prompt[start : start + length]
            self._decode([sequence], [(sequence, chunk)])
        decoding = sorted(
            (sequence for sequence in self._active() if not sequence.prefilling),
            key=lambda sequence: sequence.seq_id,
        )
        if decoding:
            self._decode(decoding, [(sequence, [sequence.pending]) for sequence in decoding])
        self._publish_estimates(time.monotonic() - started)

    def _active(self) -> list[_Sequence]:
        return [sequence for sequence in self._running if sequence is not None]

    def _admit(self, now: float) -> None:
        """Drop cancelled or expired queued requests, then fill free slots in FIFO order."""
        admitted: list[tuple[int, BatchingGeneration]] = []
        dropped: list[tuple[BatchingGeneration, str]] = []
        with self._cond:
            for generation in list(self._waiting):
                if reason := generation._interruption(now):
                    self._waiting.remove(generation)
                    dropped.append((generation, reason))
            free = [slot for slot, sequence in enumerate(self._running) if sequence is None]
            for slot in free:
                if not self._waiting:
                    break
                admitted.append((slot, self._waiting.popleft()))
            for position, generation in enumerate(self._waiting, start=1):
                generation.queue_position = position
        for generation, reason in dropped:
            generation._finish(reason)
        for slot, generation in admitted:
            generation.queue_position = 0
            self._start(slot, generation)

    def _start(self, slot: int, generation: BatchingGeneration) -> None:
        """Give `generation` slot `slot`, starting from the longest reusable KV prefix.

        The prefix comes from a cached sequence or a running one. When a sequence that is
        still prefilling will soon hold a clearly longer shared prefix (requests arriving
        together with the same system prompt), this one follows it: it waits until that
        prefix is decoded and then copies it, so the prefix is computed once.
        """
        sampling = generation.request.sampling
        sampler = SamplerChain(
            sampling, n_vocab=self._n_vocab, seed=self._seeds.next(sampling.seed)
        )
        sequence = _Sequence(
            seq_id=slot,
            generation=generation,
            sampler=sampler,
            text=_AnswerText(generation.stops),
            admitted=next(self._admissions),
        )
        prompt = generation.prompt
        usable = _reusable_length(prompt)
        source, available = self._best_prefix_source(prompt)
        leader, shared = self._best_leader(prompt)
        available, shared = min(available, usable), min(shared, usable)
        if leader is not None and shared >= available + MIN_PREFIX_REUSE:
            sequence.leader, sequence.leader_tokens = leader, shared
        elif source is not None and available >= MIN_PREFIX_REUSE:
            self._copy_prefix(source, sequence, available)
        self._running[slot] = sequence

    def _best_prefix_source(self, prompt: list[int]) -> tuple[int | None, int]:
        """The sequence id (cached or running) whose KV cache shares most of `prompt`."""
        entry, best = self._cache.best_match(prompt)
        source = entry.seq_id if entry is not None else None
        for sequence in self._active():
            length = _common_prefix_length(sequence.prefilled(), prompt)
            if length > best:
                source, best = sequence.seq_id, length
        if entry is not None and source == entry.seq_id and best >= MIN_PREFIX_REUSE:
            self._cache.touch(entry)
        return source, best

    def _best_leader(self, prompt: list[int]) -> tuple[_Sequence | None, int]:
        """The prefilling sequence whose prompt shares most of `prompt`, and how much."""
        leader: _Sequence | None = None
        best = 0
        for sequence in self._active():
            if sequence.prefilling and sequence.leader is None:
                length = _common_prefix_length(sequence.generation.prompt, prompt)
                if length > best:
                    leader, best = sequence, length
        return leader, best

    def _copy_prefix(self, source: int, sequence: _Sequence, length: int) -> None:
        # The copy is queued; llama.cpp applies it at the start of the next llama_decode,
        # before that batch's tokens are written.
        llama_cpp.llama_memory_seq_cp(self._memory, source, sequence.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, length, -1)
        sequence.n_past = length
        sequence.generation.cached_tokens = length

    def _release_followers(self) -> None:
        """Let followers copy their leader's prefix once it is decoded (or go it alone)."""
        for sequence in self._active():
            leader = sequence.leader
            if leader is None:
                continue
            if self._running[leader.seq_id] is leader:
                if leader.n_past < sequence.leader_tokens:
                    continue
                sequence.leader = None
                self._copy_prefix(leader.seq_id, sequence, sequence.leader_tokens)
                continue
            # The leader ended early (cancelled, expired, failed): take what exists now.
            sequence.leader = None
            prompt = sequence.generation.prompt
            source, available = self._best_prefix_source(prompt)
            available = min(available, _reusable_length(prompt))
            if source is not None and available >= MIN_PREFIX_REUSE:
                self._copy_prefix(source, sequence, available)

    def _plan_prefill(
        self, active: list[_Sequence], n_decoding: int
    ) -> list[tuple[_Sequence, int]]:
        """How many prompt tokens each prefilling sequence decodes this step.

        The step's budget is n_batch tokens, decoding sequences counting one each. Prompts
        get the rest in admission order, at most n_batch / slots tokens each while any
        sequence is decoding, so a long prompt delays running streams by one bounded chunk.
        Chunk sizes never isolate a prompt token (see `_chunk_size`).
        """
        prefilling = sorted(
            (s for s in active if s.prefilling and s.leader is None),
            key=lambda sequence: sequence.admitted,
        )
        if not prefilling:
            return []
        budget = self._n_batch - n_decoding
        # With nobody decoding there is nothing to stall: prompts share the whole batch.
        per_sequence = self._n_batch // self.slots if n_decoding else budget // len(prefilling)
        plan = []
        for sequence in prefilling:
            limit = min(per_sequence, budget, self._n_ubatch)
            remaining = len(sequence.generation.prompt) - sequence.n_past
            length = _chunk_size(remaining, limit)
            if length > budget or length == 0:
                continue
            plan.append((sequence, length))
            budget -= length
        return plan

    def _decode(self, sequences: list[_Sequence], work: list[tuple[_Sequence, list[int]]]) -> None:
        """Decode `work` in one llama_decode call, then sample where a prompt or token ends."""
        batch = self._batch
        assert batch is not None
        n = 0
        for sequence, tokens in work:
            ends_prompt = sequence.pending is not None or (
                sequence.n_past + len(tokens) == len(sequence.generation.prompt)
            )
            sequence.batch_row = -1
            for offset, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = sequence.n_past + offset
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = sequence.seq_id
                wants_logits = ends_prompt and offset == len(tokens) - 1
                batch.logits[n] = wants_logits
                if wants_logits:
                    sequence.batch_row = n
                n += 1
            sequence.n_past += len(tokens)
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            self._fail(sequences, f"llama_decode failed with status {status}")
            return
        now = time.monotonic()
        for sequence in sequences:
            if sequence.batch_row >= 0:
                self._sample(sequence, now)

    def _sample(self, sequence: _Sequence, now: float) -> None:
        generation = sequence.generation
        if sequence.pending is None:
            generation.prefilled_at = now
        token = sequence.sampler.sample(self._ctx, sequence.batch_row)
        generation._stats.completion_tokens += 1
        reason = self._accept(sequence, token)
        if reason is None and sequence.n_past >= self._window:
            # Only reachable when a multibyte character runs past max_tokens at the very end
            # of the window: there is no cell left to decode the pending token into.
            generation._emit(sequence.text.finish())
            reason = "length"
        if reason is not None:
            self._retire(sequence, reason)
        else:
            sequence.pending = token

    def _accept(self, sequence: _Sequence, token: int) -> str | None:
        """Stream a sampled token; the finish reason if it ends the answer."""
        generation = sequence.generation
        text = sequence.text
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            generation._emit(text.finish())
            return "stop"
        sequence.completion.append(token)
        if not text.add(self._piece(token)):
            # Inside a multibyte character: like llama-cpp-python, neither stop strings nor
            # max_tokens apply until it completes.
            return None
        if text.find_stop():
            generation._emit(text.finish())
            return "stop"
        generation._emit(text.release())
        if len(sequence.completion) >= generation.request.sampling.max_tokens:
            generation._emit(text.finish())
            return "length"
        return None

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            size = 64
            buffer = ctypes.create_string_buffer(size)
            length = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, size, 0, False)
            if length < 0:
                buffer = ctypes.create_string_buffer(-length)
                length = llama_cpp.llama_token_to_piece(
                    self._vocab, token, buffer, -length, 0, False
                )
            piece = buffer.raw[:length]
            self._pieces[token] = piece
        return piece

    def _retire(self, sequence: _Sequence, reason: str, failure: str | None = None) -> None:
        """Finish the generation and free its slot; a finished one's prompt KV stays cached."""
        generation = sequence.generation
        if reason in {"cancelled", "deadline"}:
            generation._emit(sequence.text.finish())
        if reason in {"stop", "length"}:
            self._keep_prefix(sequence)
            self._record_answer_length(len(sequence.completion))
        llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        sequence.sampler.close()
        self._running[sequence.seq_id] = None
        generation._finish(reason, failure)

    def _keep_prefix(self, sequence: _Sequence) -> None:
        tokens = sequence.prefilled()
        if self.prefix_cache_size == 0 or len(tokens) < MIN_PREFIX_REUSE:
            return
        entry = self._cache.place_for(tokens)
        if entry is None:
            return
        # A copy across KV streams replaces the destination stream wholesale; the answer's
        # cells are dropped from the copy (see `_Sequence.prefilled`).
        llama_cpp.llama_memory_seq_cp(self._memory, sequence.seq_id, entry.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._memory, entry.seq_id, len(tokens), -1)
        self._cache.store(entry, tokens)

    def _fail(self, sequences: list[_Sequence], message: str) -> None:
        """A failed decode ends the sequences it carried, not the engine."""
        logger.error("%s for %s", message, self.spec.path)
        for sequence in sequences:
            self._retire(sequence, "error", failure=message)

    def _compact(self) -> None:
        """Move running sequences down into free lower ids.

        llama.cpp packs only consecutive sequence ids into one micro-batch, so a gap costs
        a whole extra forward pass per step; moving a sequence costs one KV stream copy.
        """
        free = [slot for slot, sequence in enumerate(self._running) if sequence is None]
        for target in free:
            highest = max(
                (sequence for sequence in self._running if sequence is not None),
                key=lambda sequence: sequence.seq_id,
                default=None,
            )
            if highest is None or highest.seq_id < target:
                return
            if highest.n_past:
                llama_cpp.llama_memory_seq_cp(self._memory, highest.seq_id, target, -1, -1)
                llama_cpp.llama_memory_seq_rm(self._memory, highest.seq_id, -1, -1)
            self._running[highest.seq_id] = None
            self._running[target] = highest
            highest.seq_id = target

    def _kv_cells_in_use(self) -> int:
        cells = 0
        for seq_id in range(self.slots + self.prefix_cache_size):
            low = llama_cpp.llama_memory_seq_pos_min(self._memory, seq_id)
            high = llama_cpp.llama_memory_seq_pos_max(self._memory, seq_id)
            if high >= 0:
                cells += high - low + 1
        return cells

    # -- estimates --------------------------------------------------------------------------

    def _expected_steps(self, generation: BatchingGeneration) -> float:
        """Decode steps a queued request will hold its slot for; call with _cond held."""
        chunk = max(1, self._n_batch // self.slots)
        prefill = math.ceil(len(generation.prompt) / chunk)
        answer = generation.request.sampling.max_tokens
        if self._answer_tokens is not None:
            answer = min(answer, self._answer_tokens)
        return prefill + answer

    def _publish_estimates(self, step_seconds: float | None) -> None:
        chunk = max(1, self._n_batch // self.slots)
        steps_left = []
        for sequence in self._running:
            if sequence is None:
                steps_left.append(0.0)
                continue
            generation = sequence.generation
            prompt_left = max(0, len(generation.prompt) - sequence.n_past)
            answer = float(generation.request.sampling.max_tokens)
            if self._answer_tokens is not None:
                answer = min(answer, self._answer_tokens)
            answer_left = max(1.0, answer - len(sequence.completion))
            steps_left.append(math.ceil(prompt_left / chunk) + answer_left)
        with self._cond:
            self._slot_steps_left = steps_left
            previous = self._step_seconds
            if step_seconds is None:
                return
            self._step_seconds = (
                step_seconds
                if previous is None
                else previous + _EWMA_WEIGHT * (step_seconds - previous)
            )

    def _record_answer_length(self, tokens: int) -> None:
        with self._cond:
            previous = self._answer_tokens
            self._answer_tokens = (
                float(tokens) if previous is None else previous + _EWMA_WEIGHT * (tokens - previous)
            )

    # -- shutdown ---------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Runs on the scheduler thread as it exits: nothing queued or running is left hanging."""
        failure = None if self._broken is None else f"The engine failed: {self._broken}"
        reason = "cancelled" if failure is None else "error"
        for sequence in self._active():
            try:
                self._retire(sequence, reason, failure)
            except Exception:  # the context may be what failed; still release the consumer
                logger.exception("Could not free sequence %s", sequence.seq_id)
                self._running[sequence.seq_id] = None
                sequence.generation._finish(reason, failure)
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
        for generation in waiting:
            generation._finish(reason, failure)

"""Continuous batching: many conversations decoded together in one llama.cpp context.

One scheduler thread owns the context. Each step it retires finished, cancelled and
expired sequences, admits queued requests into free slots (warm-starting them from cached
or running sequences that share a prompt prefix), decodes the next token of every running
sequence in one `llama_decode` call, then advances prefilling sequences by bounded prompt
chunks, so a long prompt never stalls the streams already running.

Answers do not depend on what else is batched or cached: every sequence id is its own KV
stream (`kv_unified=False`), laid out as in a single-sequence context, and prompt tokens
are always decoded in chunks of two or more while answer tokens go one per sequence, as in
llama-cpp-python's own loop (see `prefix_cache.chunk_size`). Greedy output thus matches
`LlamaEngine`.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import llama_cpp

from apps.inference.engine.base import (
    ChatRequest,
    Engine,
    EngineError,
    EngineLoad,
    FinishReason,
    ModelSpec,
)
from apps.inference.engine.estimates import WaitEstimator
from apps.inference.engine.llama import gpu_offload_supported
from apps.inference.engine.prefix_cache import MIN_PREFIX_REUSE as MIN_PREFIX_REUSE
from apps.inference.engine.prefix_cache import PrefixCache, chunk_size
from apps.inference.engine.prefix_sharing import PrefixSharing
from apps.inference.engine.prompts import ChatPrompts
from apps.inference.engine.sampling import SamplerChain, SeedSequence
from apps.inference.engine.sequence import BatchingGeneration, RunningSequence, SequenceState
from apps.inference.engine.text import AnswerText

logger = logging.getLogger(__name__)

DEFAULT_SLOTS = 4
DEFAULT_PREFIX_CACHE_SIZE = 4
# llama.cpp pads each sequence's context window to a multiple of this.
_CTX_PAD = 256


@dataclass(frozen=True)
class BatchingSnapshot:
    """What the scheduler holds right now, for health pages, backpressure and tests."""

    slots: int
    running: int
    waiting: int
    cached_prefixes: int
    kv_cells_in_use: int


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
        self.spec: ModelSpec = spec
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
            self._prompts = ChatPrompts(spec, self._llama, self.n_ctx)
        except BaseException:
            self._free_context()
            self._free_llama()
            raise
        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._vocab = vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self._pieces: dict[int, bytes] = {}
        self._seeds = SeedSequence(spec.seed)
        self._cache = PrefixCache(range(slots, n_seq))
        self._running: list[RunningSequence | None] = [None] * slots
        self._sharing = PrefixSharing(self._memory, self._cache, self._running, prefix_cache_size)
        self._admissions = itertools.count()
        # _cond guards the waiting queue, the closing flag and the published estimates.
        self._cond = threading.Condition()
        self._waiting: deque[BatchingGeneration] = deque()
        chunk = max(1, self._n_batch // slots)
        self._estimates = WaitEstimator(slots=slots, chunk=chunk, lock=self._cond)
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
        messages, _ = self._prompts.fit(request.messages, max_tokens)
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
        return self._prompts.render(messages)

    def queue_depth(self) -> int:
        """Requests submitted but not yet given a slot."""
        with self._cond:
            return len(self._waiting)

    def estimated_wait_seconds(self) -> float:
        """Roughly how long a request submitted now would wait for a slot.

        Replays the queue against the slots' expected remaining steps (prompt chunks left,
        then the average answer length capped by max_tokens), at the average step time.
        """
        return self._estimates.wait_seconds(self._waiting)

    def load(self) -> EngineLoad:
        return EngineLoad(
            slots=self.slots,
            running=sum(1 for sequence in self._running if sequence is not None),
            waiting=self.queue_depth(),
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
        self._window: int = llama_cpp.llama_n_ctx_seq(ctx)
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
        `chunk_size`). Chunks go first so that a new request's first token does not wait
        for the running sequences' decode; sequences whose prompt completes join the
        decode call of the same step.
        """
        now = time.monotonic()
        for sequence in self._active():
            if reason := sequence.generation._interruption(now):
                self._retire(sequence, reason)
        self._admit(now)
        self._sharing.release_followers()
        self._compact()
        active = self._active()
        plan = self._plan_prefill(
            active, sum(1 for s in active if s.state is SequenceState.DECODING)
        )
        if not plan and all(sequence.state is not SequenceState.DECODING for sequence in active):
            self._estimates.publish(self._running, None)
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
            (sequence for sequence in self._active() if sequence.state is SequenceState.DECODING),
            key=lambda sequence: sequence.seq_id,
        )
        if decoding:
            self._decode(decoding, [(sequence, [sequence.next_token()]) for sequence in decoding])
        self._estimates.publish(self._running, time.monotonic() - started)

    def _active(self) -> list[RunningSequence]:
        return [sequence for sequence in self._running if sequence is not None]

    def _admit(self, now: float) -> None:
        """Drop cancelled or expired queued requests, fill free slots in FIFO order, then
        renumber the queue: a waiter hearing its new place already sees the slots taken."""
        admitted: list[tuple[int, BatchingGeneration]] = []
        dropped: list[tuple[BatchingGeneration, FinishReason]] = []
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
        for generation, reason in dropped:
            generation._finish(reason)
        for slot, generation in admitted:
            generation.queue_position = 0
            self._start(slot, generation)
        with self._cond:
            for position, generation in enumerate(self._waiting, start=1):
                generation.queue_position = position

    def _start(self, slot: int, generation: BatchingGeneration) -> None:
        """Give `generation` slot `slot`, warm-started from a shared prompt prefix if any."""
        sampling = generation.request.sampling
        sampler = SamplerChain(
            sampling, n_vocab=self._n_vocab, seed=self._seeds.next(sampling.seed)
        )
        sequence = RunningSequence(
            seq_id=slot,
            generation=generation,
            sampler=sampler,
            text=AnswerText(generation.stops),
            admitted=next(self._admissions),
        )
        self._sharing.warm_start(sequence)
        self._running[slot] = sequence

    def _plan_prefill(
        self, active: list[RunningSequence], n_decoding: int
    ) -> list[tuple[RunningSequence, int]]:
        """How many prompt tokens each prefilling sequence decodes this step.

        The step's budget is n_batch tokens, decoding sequences counting one each. Prompts
        get the rest in admission order, at most n_batch / slots tokens each while any
        sequence is decoding, so a long prompt delays running streams by one bounded chunk.
        Chunk sizes never isolate a prompt token (see `chunk_size`).
        """
        prefilling = sorted(
            (s for s in active if s.state is SequenceState.PREFILLING),
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
            length = chunk_size(remaining, limit)
            if length > budget or length == 0:
                continue
            plan.append((sequence, length))
            budget -= length
        return plan

    def _decode(
        self, sequences: list[RunningSequence], work: list[tuple[RunningSequence, list[int]]]
    ) -> None:
        """Decode `work` in one llama_decode call, then sample where a prompt or token ends."""
        batch = self._batch
        assert batch is not None
        # llama-cpp-python annotates `pos` as an array of arrays; it is one position per row.
        positions = cast("ctypes.Array[ctypes.c_int32]", batch.pos)
        n = 0
        for sequence, tokens in work:
            ends_prompt = sequence.state is SequenceState.DECODING or (
                sequence.n_past + len(tokens) == len(sequence.generation.prompt)
            )
            sequence.batch_row = -1
            for offset, token in enumerate(tokens):
                batch.token[n] = token
                positions[n] = sequence.n_past + offset
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

    def _sample(self, sequence: RunningSequence, now: float) -> None:
        generation = sequence.generation
        if sequence.state is not SequenceState.DECODING:
            generation.prefilled_at = now
        assert self._ctx is not None
        token = sequence.sampler.sample(self._ctx, sequence.batch_row)
        generation._stats.completion_tokens += 1
        reason = self._accept(sequence, token)
        if reason is None and sequence.n_past >= self._window:
            # Only reachable when a multibyte character runs past max_tokens at the very end
            # of the window: there is no cell left to decode the pending token into.
            generation._emit(sequence.text.finish())
            reason = FinishReason.LENGTH
        if reason is not None:
            self._retire(sequence, reason)
        else:
            sequence.pending = token
            sequence.state = SequenceState.DECODING

    def _accept(self, sequence: RunningSequence, token: int) -> FinishReason | None:
        """Stream a sampled token; the finish reason if it ends the answer."""
        generation = sequence.generation
        text = sequence.text
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            generation._emit(text.finish())
            return FinishReason.STOP
        sequence.completion.append(token)
        if not text.add(self._piece(token)):
            # Inside a multibyte character: like llama-cpp-python, neither stop strings nor
            # max_tokens apply until it completes.
            return None
        if text.find_stop():
            generation._emit(text.finish())
            return FinishReason.STOP
        generation._emit(text.release())
        if len(sequence.completion) >= generation.request.sampling.max_tokens:
            generation._emit(text.finish())
            return FinishReason.LENGTH
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

    def _retire(
        self, sequence: RunningSequence, reason: FinishReason, failure: str | None = None
    ) -> None:
        """Finish the generation and free its slot; a finished one's prompt KV stays cached."""
        generation = sequence.generation
        if reason in {FinishReason.CANCELLED, FinishReason.DEADLINE}:
            generation._emit(sequence.text.finish())
        if reason in {FinishReason.STOP, FinishReason.LENGTH}:
            self._sharing.keep(sequence)
            self._estimates.record_answer_length(len(sequence.completion))
        llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
        sequence.sampler.close()
        self._running[sequence.seq_id] = None
        sequence.state = SequenceState.FINISHED
        generation._finish(reason, failure)

    def _fail(self, sequences: list[RunningSequence], message: str) -> None:
        """A failed decode ends the sequences it carried, not the engine."""
        logger.error("%s for %s", message, self.spec.path)
        for sequence in sequences:
            self._retire(sequence, FinishReason.ERROR, failure=message)

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

    # -- shutdown ---------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Runs on the scheduler thread as it exits: nothing queued or running is left hanging."""
        failure = None if self._broken is None else f"The engine failed: {self._broken}"
        reason = FinishReason.CANCELLED if failure is None else FinishReason.ERROR
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

"""How a sequence starts from KV already computed instead of decoding its whole prompt.

A new sequence copies the longest shared prompt prefix from a cached or running sequence,
or follows a sequence still prefilling a clearly longer shared prefix and copies it once
decoded; a finished sequence's prompt is kept in the prefix cache for later requests.
The scheduler thread is the only caller: it owns the llama.cpp context these copies touch.
"""

from __future__ import annotations

import llama_cpp

from apps.inference.engine.prefix_cache import (
    MIN_PREFIX_REUSE,
    PrefixCache,
    common_prefix_length,
    reusable_length,
)
from apps.inference.engine.sequence import RunningSequence, SequenceState


class PrefixSharing:
    """Copies prompt prefixes between the KV streams of the slots and the prefix cache."""

    def __init__(
        self,
        memory: llama_cpp.llama_memory_t,
        cache: PrefixCache,
        running: list[RunningSequence | None],
        cache_size: int,
    ) -> None:
        self._memory = memory
        self._cache = cache
        self._running = running  # the scheduler's slot list, shared, not copied
        self._cache_size = cache_size

    def _active(self) -> list[RunningSequence]:
        return [sequence for sequence in self._running if sequence is not None]

    def warm_start(self, sequence: RunningSequence) -> None:
        """Start a new sequence from the longest reusable KV prefix, or follow a leader.

        The prefix comes from a cached sequence or a running one. When a sequence that is
        still prefilling will soon hold a clearly longer shared prefix (requests arriving
        together with the same system prompt), this one follows it: it waits until that
        prefix is decoded and then copies it, so the prefix is computed once.
        """
        prompt = sequence.generation.prompt
        usable = reusable_length(prompt)
        source, available = self._best_prefix_source(prompt)
        leader, shared = self._best_leader(prompt)
        available, shared = min(available, usable), min(shared, usable)
        if leader is not None and shared >= available + MIN_PREFIX_REUSE:
            sequence.leader, sequence.leader_tokens = leader, shared
            sequence.state = SequenceState.FOLLOWING
        elif source is not None and available >= MIN_PREFIX_REUSE:
            self._copy_prefix(source, sequence, available)

    def _best_prefix_source(self, prompt: list[int]) -> tuple[int | None, int]:
        """The sequence id (cached or running) whose KV cache shares most of `prompt`."""
        entry, best = self._cache.best_match(prompt)
        source = entry.seq_id if entry is not None else None
        for sequence in self._active():
            length = common_prefix_length(sequence.prefilled(), prompt)
            if length > best:
                source, best = sequence.seq_id, length
        if entry is not None and source == entry.seq_id and best >= MIN_PREFIX_REUSE:
            self._cache.touch(entry)
        return source, best

    def _best_leader(self, prompt: list[int]) -> tuple[RunningSequence | None, int]:
        """The prefilling sequence whose prompt shares most of `prompt`, and how much."""
        leader: RunningSequence | None = None
        best = 0
        for sequence in self._active():
            if sequence.state is SequenceState.PREFILLING:
                length = common_prefix_length(sequence.generation.prompt, prompt)
                if length > best:
                    leader, best = sequence, length
        return leader, best

    def _copy_prefix(self, source: int, sequence: RunningSequence, length: int) -> None:
        # The copy is queued; llama.cpp applies it at the start of the next llama_decode,
        # before that batch's tokens are written.
        llama_cpp.llama_memory_seq_cp(self._memory, source, sequence.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, length, -1)
        sequence.n_past = length
        sequence.generation.cached_tokens = length

    def release_followers(self) -> None:
        """Let followers copy their leader's prefix once it is decoded (or go it alone)."""
        for sequence in self._active():
            leader = sequence.leader
            if leader is None:
                continue
            if self._running[leader.seq_id] is leader:
                if leader.n_past < sequence.leader_tokens:
                    continue
                sequence.leader = None
                sequence.state = SequenceState.PREFILLING
                self._copy_prefix(leader.seq_id, sequence, sequence.leader_tokens)
                continue
            # The leader ended early (cancelled, expired, failed): take what exists now.
            sequence.leader = None
            sequence.state = SequenceState.PREFILLING
            prompt = sequence.generation.prompt
            source, available = self._best_prefix_source(prompt)
            available = min(available, reusable_length(prompt))
            if source is not None and available >= MIN_PREFIX_REUSE:
                self._copy_prefix(source, sequence, available)

    def keep(self, sequence: RunningSequence) -> None:
        tokens = sequence.prefilled()
        if self._cache_size == 0 or len(tokens) < MIN_PREFIX_REUSE:
            return
        entry = self._cache.place_for(tokens)
        if entry is None:
            return
        # A copy across KV streams replaces the destination stream wholesale; the answer's
        # cells are dropped from the copy (see `RunningSequence.prefilled`).
        llama_cpp.llama_memory_seq_cp(self._memory, sequence.seq_id, entry.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._memory, entry.seq_id, len(tokens), -1)
        self._cache.store(entry, tokens)

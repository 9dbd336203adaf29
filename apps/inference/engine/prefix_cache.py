"""Which prompt prefixes the batching engine can reuse, and how prompts are chunked.

The bookkeeping only: which extra sequence ids hold which token prefixes (evicted LRU),
and the rules that keep reused or chunked prompts on the same kernels as a fresh one, so
answers never depend on what happens to be cached. The KV copies themselves stay with the
scheduler, which owns the llama.cpp context.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

# Reusing a prefix copies a whole KV stream (every cell, used or not), which only beats
# recomputing the prefix when it is more than a handful of tokens.
MIN_PREFIX_REUSE = 16


@dataclass
class CachedPrefix:
    seq_id: int
    tokens: tuple[int, ...] = ()
    last_used: int = 0


class PrefixCache:
    """Which token prefixes the cache sequence ids hold: a fixed set of ids, evicted LRU."""

    def __init__(self, seq_ids: Sequence[int]) -> None:
        self._entries = [CachedPrefix(seq_id) for seq_id in seq_ids]
        self._clock = itertools.count(1)

    def __len__(self) -> int:
        return sum(1 for entry in self._entries if entry.tokens)

    def best_match(self, prompt: Sequence[int]) -> tuple[CachedPrefix | None, int]:
        best: CachedPrefix | None = None
        best_length = 0
        for entry in self._entries:
            length = common_prefix_length(entry.tokens, prompt)
            if length > best_length:
                best, best_length = entry, length
        return best, best_length

    def touch(self, entry: CachedPrefix) -> None:
        entry.last_used = next(self._clock)

    def place_for(self, tokens: Sequence[int]) -> CachedPrefix | None:
        """The entry to overwrite with `tokens`; None when a cached entry already covers them.

        An entry that is a prefix of `tokens` (the previous turn of the same conversation,
        or the bare system prompt) is replaced, since the new one serves every lookup the
        old one could; otherwise a free id, otherwise the least recently used one.
        """
        for entry in self._entries:
            if entry.tokens and common_prefix_length(entry.tokens, tokens) == len(tokens):
                self.touch(entry)
                return None
        for entry in self._entries:
            if entry.tokens and common_prefix_length(entry.tokens, tokens) == len(entry.tokens):
                return entry
        return min(self._entries, key=lambda entry: (bool(entry.tokens), entry.last_used))

    def store(self, entry: CachedPrefix, tokens: Sequence[int]) -> None:
        entry.tokens = tuple(tokens)
        self.touch(entry)


def chunk_size(remaining: int, limit: int) -> int:
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


def reusable_length(prompt: Sequence[int]) -> int:
    """How much of `prompt` may come from another sequence's cache: all but two tokens.

    The last prompt token's logits are needed, and it must be decoded in a chunk of at
    least two (see `chunk_size`).
    """
    return max(0, len(prompt) - 2)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length

"""Per-sequence llama.cpp sampler chains, built the way llama-cpp-python builds its own.

The batching engine samples many sequences from one context, so each sequence needs its
own chain (its own repeat-penalty history and RNG). The chain mirrors
`llama_cpp.Llama._init_sampler`, so a request samples the same tokens in both engines.
"""

from __future__ import annotations

import random

import llama_cpp

from apps.inference.engine.base import SamplingParams

# llama-cpp-python's default `last_n_tokens_size`: how far back the repeat penalty looks.
PENALTY_LAST_N = 64
# llama.cpp's LLAMA_DEFAULT_SEED: "pick a random seed" when handed to a dist sampler.
DEFAULT_SEED = 0xFFFFFFFF


class SeedSequence:
    """The seeds llama-cpp-python gives requests without one: each derived from the last.

    `Llama._create_completion` replaces its seed with `Random(seed).randint(0, 2**32)` on
    every unseeded call, starting from the model's seed; replaying that chain keeps
    unseeded requests reproducible in the same way as in the single-stream engine.
    """

    def __init__(self, model_seed: int) -> None:
        self._seed = model_seed or DEFAULT_SEED

    def next(self, requested: int | None) -> int:
        if requested is not None:
            self._seed = requested
        else:
            self._seed = random.Random(self._seed).randint(0, 2**32)
        return self._seed


class SamplerChain:
    """One sequence's llama.cpp sampler chain; not thread-safe, owned by the scheduler thread."""

    def __init__(self, params: SamplingParams, *, n_vocab: int, seed: int) -> None:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if chain is None:
            raise RuntimeError("llama_sampler_chain_init failed")
        self._chain: llama_cpp.llama_sampler_p | None = chain
        add = llama_cpp.llama_sampler_chain_add
        add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0
            ),
        )
        if params.temperature < 0:
            add(chain, llama_cpp.llama_sampler_init_dist(seed))
        elif params.temperature == 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            min_keep = 1
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(chain, llama_cpp.llama_sampler_init_typical(1.0, min_keep))
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, min_keep))
            add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, min_keep))
            add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
            add(chain, llama_cpp.llama_sampler_init_dist(seed))

    def sample(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """Sample from the logits of batch row `batch_index` and record the token in the chain."""
        assert self._chain is not None, "sampler chain used after close()"
        return int(llama_cpp.llama_sampler_sample(self._chain, ctx, batch_index))

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

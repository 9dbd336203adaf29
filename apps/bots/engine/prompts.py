"""The batching engine's prompt rendering, token counting and history truncation."""

from __future__ import annotations

from collections.abc import Sequence

import llama_cpp

from apps.bots.engine.base import ModelSpec
from apps.bots.engine.llama import LlamaEngine


class ChatPrompts(LlamaEngine):
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

"""Prompt rendering, token counting and history truncation, shared by both engines.

One object both engines hold (rather than a shared base class) keeps their prompts
token-for-token identical: same chat-format detection, same template, same truncation
rules, so greedy answers match between the single-stream and the batching engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2
import llama_cpp
from llama_cpp import llama_chat_format

from apps.inference.engine.base import EngineError, ModelSpec, PromptTooLong


class ChatPrompts:
    """A model's chat format, and the prompt budget of one context window of `n_ctx` tokens."""

    def __init__(self, spec: ModelSpec, llama: llama_cpp.Llama, n_ctx: int) -> None:
        self.spec = spec
        self._llama = llama
        self.n_ctx = n_ctx
        self.formatter = self._chat_formatter()

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The exact prompt text the model will see."""
        return self.format(messages).prompt

    def encode(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[str]]:
        """Prompt tokens and the format's stop strings, as llama-cpp-python's handler makes them."""
        result = self.format(messages)
        tokens = self._llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        return tokens, stops

    def _chat_formatter(self) -> llama_chat_format.ChatFormatter:
        """Pick the formatter llama-cpp-python would use, as an object we can call ourselves."""
        if self.spec.chat_template is not None:
            return self._jinja_formatter(self.spec.chat_template)
        name = self._llama.chat_format or "llama-2"
        if name.startswith("chat_template."):
            # Templates embedded in the GGUF; "chat_template.default" is the unnamed one.
            suffix = name.removeprefix("chat_template.")
            key = "tokenizer.chat_template" + ("" if suffix == "default" else f".{suffix}")
            if key in self._llama.metadata:
                return self._jinja_formatter(self._llama.metadata[key])
        try:
            handler = llama_chat_format.get_chat_completion_handler(name)
        except llama_chat_format.LlamaChatCompletionHandlerNotFoundException as exc:
            raise EngineError(f"Unknown chat format {name!r} for {self.spec.path}") from exc
        formatter = _formatter_behind(handler)
        if formatter is None:
            raise EngineError(
                f"Chat format {name!r} is a custom handler, not a prompt format; "
                "the engine cannot budget its prompts. Use a chat template instead."
            )
        return formatter

    def _jinja_formatter(self, template: str) -> llama_chat_format.Jinja2ChatFormatter:
        bos_id, eos_id = self._llama.token_bos(), self._llama.token_eos()
        try:
            return llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(eos_id),
                bos_token=self._token_text(bos_id),
                stop_token_ids=[eos_id],
            )
        except jinja2.TemplateError as exc:
            raise EngineError(f"The chat template does not compile: {exc}") from exc

    def _token_text(self, token: int) -> str:
        if token == -1:
            return ""
        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        text: bytes = llama_cpp.llama_vocab_get_text(vocab, token)
        return text.decode("utf-8")

    def format(self, messages: Sequence[dict[str, str]]) -> llama_chat_format.ChatFormatterResponse:
        try:
            return self.formatter(messages=list(messages))  # type: ignore[arg-type]
        except (jinja2.TemplateError, ValueError, TypeError, KeyError) as exc:
            raise EngineError(f"The chat template cannot render this conversation: {exc}") from exc

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        """Count the prompt exactly as llama-cpp-python's chat handler tokenizes it."""
        result = self.format(messages)
        tokens = self._llama.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        return len(tokens)

    def fit(
        self, messages: Sequence[dict[str, str]], max_tokens: int
    ) -> tuple[list[dict[str, str]], int]:
        """Drop the oldest history until prompt plus answer fit in the context window."""
        if not messages:
            raise EngineError("A chat request needs at least one message")
        kept = list(messages)
        budget = self.n_ctx - max_tokens
        prompt_tokens = self.prompt_tokens(kept)
        while prompt_tokens > budget:
            if not _drop_oldest_turn(kept):
                raise PromptTooLong(
                    f"The prompt needs {prompt_tokens} tokens but only {budget} fit "
                    f"(context window {self.n_ctx} minus max_tokens {max_tokens}), "
                    "even without the conversation history",
                    prompt_tokens=prompt_tokens,
                    budget=budget,
                )
            prompt_tokens = self.prompt_tokens(kept)
        return kept, prompt_tokens


def _formatter_behind(handler: Any) -> llama_chat_format.ChatFormatter | None:
    """Named formats are registered as closures over their formatter; fetch that formatter."""
    code = getattr(handler, "__code__", None)
    closure = getattr(handler, "__closure__", None)
    if code is None or closure is None:
        return None
    for name, cell in zip(code.co_freevars, closure, strict=True):
        if name == "chat_formatter":
            formatter: llama_chat_format.ChatFormatter = cell.cell_contents
            return formatter
    return None


def _drop_oldest_turn(messages: list[dict[str, str]]) -> bool:
    """Remove the oldest history message (and a reply it leaves orphaned); False if none left.

    System messages and everything from the final user message on are never dropped. An
    assistant message left at the head of the history goes too, as many templates require
    user/assistant turns to alternate.
    """
    roles = [message.get("role") for message in messages]
    last_user = max((i for i, role in enumerate(roles) if role == "user"), default=len(roles) - 1)
    history = [i for i in range(last_user) if roles[i] != "system"]
    if not history:
        return False
    del messages[history[0]]
    if len(history) > 1 and roles[history[1]] == "assistant":
        del messages[history[1] - 1]
    return True

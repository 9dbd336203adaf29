"""The engine package is split by topic (issue 10, item 4): answer text, prefix cache and
sequence states in their own modules, finish reasons as an enum. No module may grow back
past the size that asked for the split, and both engines must report the enum, not loose
strings, so a typo in a reason can no longer slip through."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from apps.inference.engine.base import (
    FINISH_REASONS,
    ChatRequest,
    Engine,
    FinishReason,
    ModelSpec,
    SamplingParams,
)
from apps.inference.engine.batching import BatchingEngine
from apps.inference.engine.llama import LlamaEngine
from apps.inference.engine.prefix_cache import PrefixCache, chunk_size, reusable_length
from apps.inference.engine.prompts import ChatPrompts
from apps.inference.engine.text import AnswerText

REPO = Path(__file__).resolve().parent.parent
ENGINE = REPO / "apps" / "inference" / "engine"
MAX_LINES = 600
MODEL_PATH = os.environ.get(
    "WECOM_AI_MODEL_PATH", str(REPO / "var" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
)
STORY = ({"role": "user", "content": "Write a long story about a dragon and a knight."},)


def test_no_engine_module_over_600_lines() -> None:
    # Given every module of the engine package
    sizes = {path.name: len(path.read_text().splitlines()) for path in ENGINE.glob("*.py")}

    # Then none is long enough to ask for another split
    assert "batching.py" in sizes
    assert {name: lines for name, lines in sizes.items() if lines > MAX_LINES} == {}


def test_prompts_are_composed_into_both_engines_not_inherited() -> None:
    # The batching engine used to subclass LlamaEngine and skip its __init__
    assert not issubclass(ChatPrompts, Engine)
    assert not issubclass(BatchingEngine, LlamaEngine)


def test_finish_reasons_keep_their_string_values() -> None:
    # Callers (turn bookkeeping, LLM review) compare and store plain strings
    assert {"stop", "length", "cancelled", "deadline", "error"} == FINISH_REASONS
    assert {reason.value for reason in FinishReason} == FINISH_REASONS
    assert FinishReason.LENGTH == "length" and str(FinishReason.LENGTH) == "length"


def test_answer_text_holds_back_a_possible_stop_string_and_cuts_at_it() -> None:
    # Given an answer with the stop string "<|im_end|>" arriving in pieces
    text = AnswerText(["<|im_end|>"])

    # When a piece ends with what may be the start of the stop string
    assert text.add("答案<|im".encode())
    assert not text.find_stop()

    # Then only the part before it is released
    assert text.release() == "答案"

    # And once the stop string completes, the answer ends before it
    assert text.add(b"_end|>tail")
    assert text.find_stop()
    assert text.finish() == ""


def test_answer_text_never_releases_half_a_character() -> None:
    # Given a three-byte character split over two tokens
    text = AnswerText([])
    encoded = "长".encode()

    # When only its first byte has arrived, the token is held back from stop checks
    assert not text.add(b"ab" + encoded[:1])

    # Then only whole characters are released, the rest once it completes
    assert text.release() == "ab"
    text.add(encoded[1:])
    assert text.release() == "长"


def test_prefix_cache_replaces_a_shorter_turn_of_the_same_conversation() -> None:
    # Given a cache of two ids holding a conversation's first turn
    cache = PrefixCache([4, 5])
    first_turn = list(range(20))
    entry = cache.place_for(first_turn)
    assert entry is not None
    cache.store(entry, first_turn)

    # When the next turn (which extends it) is kept
    second_turn = [*first_turn, 20, 21, 22]
    replaced = cache.place_for(second_turn)

    # Then it overwrites the first turn, not the free id, and serves lookups of both
    assert replaced is entry
    assert replaced is not None
    cache.store(replaced, second_turn)
    assert len(cache) == 1
    assert cache.best_match([*first_turn, 99]) == (entry, len(first_turn))
    # And a prefix already covered is not stored twice
    assert cache.place_for(first_turn) is None


def test_prompt_chunks_never_isolate_a_token() -> None:
    assert chunk_size(9, 8) == 7  # leaving one token behind would decode it alone
    assert chunk_size(10, 8) == 8
    assert chunk_size(1, 8) == 1  # a one-token prompt has no choice
    assert reusable_length([1, 2, 3]) == 1


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    if not os.path.isfile(MODEL_PATH):
        pytest.fail(f"Model not found at {MODEL_PATH}; set WECOM_AI_MODEL_PATH")
    return ModelSpec(path=MODEL_PATH, n_ctx=512)


@pytest.fixture(scope="module", params=["llama", "batching"])
def engine(request: pytest.FixtureRequest, spec: ModelSpec) -> Iterator[Engine]:
    loaded: Engine = (
        LlamaEngine(spec)
        if request.param == "llama"
        else BatchingEngine(spec, slots=2, prefix_cache_size=0)
    )
    with loaded:
        yield loaded


def test_both_engines_render_prompts_through_one_composed_object(engine: Engine) -> None:
    prompts = engine._prompts  # type: ignore[attr-defined]
    assert isinstance(prompts, ChatPrompts)
    assert prompts.n_ctx == engine.n_ctx  # type: ignore[attr-defined]


def test_both_engines_report_finish_reasons_as_the_enum(engine: Engine) -> None:
    # Given a request that runs into max_tokens, and one cancelled before it is read
    sampling = SamplingParams(temperature=0.0, max_tokens=3)
    limited = engine.submit(ChatRequest(messages=STORY, sampling=sampling))
    list(limited)
    cancelled = engine.submit(ChatRequest(messages=STORY, sampling=sampling))
    cancelled.cancel()
    list(cancelled)

    # Then both report a FinishReason member, not a loose string
    assert type(limited.stats.finish_reason) is FinishReason
    assert limited.stats.finish_reason is FinishReason.LENGTH
    assert type(cancelled.stats.finish_reason) is FinishReason
    assert cancelled.stats.finish_reason is FinishReason.CANCELLED

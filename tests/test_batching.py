"""The continuous-batching engine against the real bundled model: equality, scheduling, caching."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import llama_cpp
import pytest

from apps.inference.engine import registry
from apps.inference.engine.base import ChatRequest, EngineError, ModelSpec, SamplingParams
from apps.inference.engine.batching import (
    MIN_PREFIX_REUSE,
    BatchingEngine,
    BatchingGeneration,
)
from apps.inference.engine.llama import LlamaEngine

REPO = Path(__file__).resolve().parent.parent
MODEL_PATH = os.environ.get(
    "WECOM_AI_MODEL_PATH", str(REPO / "var" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
)
N_CTX = 1024
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
SYSTEM = {"role": "system", "content": "You are a concise assistant."}
# A system prompt long enough (well over MIN_PREFIX_REUSE tokens) for prefix reuse to matter.
BOT_SYSTEM = {
    "role": "system",
    "content": (
        "You are the internal help desk assistant of a mid-sized company. You answer "
        "questions from employees about IT accounts, office equipment, travel expenses and "
        "holidays. Keep answers short and friendly, and say so when you do not know."
    ),
}
STORY = ({"role": "user", "content": "Write a long story about a dragon and a knight."},)
QUESTIONS = (
    "What is the capital of France?",
    "请用中文介绍一下长城。",
    "Name three colors.",
    "Write a long story about a dragon and a knight.",
)
WAIT_SECONDS = 60.0  # a generous bound for polling loops, never an assertion on speed


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    if not os.path.isfile(MODEL_PATH):
        pytest.fail(f"Model not found at {MODEL_PATH}; set WECOM_AI_MODEL_PATH")
    return ModelSpec(path=MODEL_PATH, n_ctx=N_CTX)


@pytest.fixture(scope="module")
def engine(spec: ModelSpec) -> Iterator[BatchingEngine]:
    with BatchingEngine(spec, slots=4, prefix_cache_size=4) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def single_slot(spec: ModelSpec) -> Iterator[BatchingEngine]:
    """slots=1 and no prefix cache: the single-stream fallback, and a cold reference."""
    with BatchingEngine(spec, slots=1, prefix_cache_size=0) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def single_stream(spec: ModelSpec) -> Iterator[LlamaEngine]:
    with LlamaEngine(spec) as loaded:
        yield loaded


def ask(content: str, system: dict[str, str] = SYSTEM) -> tuple[dict[str, str], ...]:
    return (system, {"role": "user", "content": content})


def consume_all(generations: list[BatchingGeneration]) -> list[str]:
    """Read every generation from its own thread, the way Celery threads would."""
    texts: dict[int, str] = {}

    def read(index: int) -> None:
        texts[index] = "".join(generations[index])

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(generations))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_SECONDS)
    return [texts.get(index, "<unfinished>") for index in range(len(generations))]


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def test_concurrent_greedy_equals_sequential_and_single_stream(
    engine: BatchingEngine, single_stream: LlamaEngine
) -> None:
    """Four greedy requests decoded together give exactly what each gives alone.

    Exact equality holds, with LlamaEngine too, by construction rather than luck: each
    sequence id is its own KV stream (kv_unified=False) filled from cell 0 like a
    single-sequence context, flash attention is off in both engines, and this CPU build
    computes every matmul output from its own row alone. So a sequence's logits do not
    depend on the batch size or on the other sequences in the batch. (A unified KV
    cache would interleave sequences' cells and change the summation order inside
    attention, which is where batch-dependent rounding would come from.) One kernel
    difference does exist: a token decoded alone in its stream gets slightly different
    numbers from one decoded in a chunk of two or more; the engine decodes prompts in
    chunks of two or more and answer tokens one at a time, as llama-cpp-python does. The
    single-stream engine's streamed text can still differ in rare CJK answers, by
    dropping characters; see test_streamed_chinese_keeps_every_character.
    """
    requests = [ChatRequest(messages=ask(question), sampling=GREEDY) for question in QUESTIONS]

    # When the requests run one at a time through the single-stream engine and the batching one
    reference = ["".join(single_stream.submit(request)) for request in requests]
    sequential = ["".join(engine.submit(request)) for request in requests]
    # and then all at once
    generations = [engine.submit(request) for request in requests]
    concurrent = consume_all(generations)

    # Then all three agree, and the concurrent ones really were decoded together
    assert all(reference)
    assert sequential == reference
    assert concurrent == reference
    assert "\ufffd" not in concurrent[1]  # whole characters survive streaming
    prefilled = [generation.prefilled_at for generation in generations]
    finished = [generation.stats.finished_at for generation in generations]
    assert None not in prefilled and None not in finished
    assert max(prefilled) < min(finished)  # type: ignore[type-var]
    assert {generation.stats.finish_reason for generation in generations} <= {"stop", "length"}


def test_streamed_chinese_keeps_every_character(engine: BatchingEngine, spec: ModelSpec) -> None:
    """The streamed answer equals llama-cpp-python's non-streamed one, character for character.

    This greedy answer contains a token whose bytes end inside a character; llama-cpp-python
    0.3.36's own streaming loses text after it (so LlamaEngine streams
    "如何在工作中实oliberal为" here), while the non-streamed completion decodes all tokens
    at once. The batching engine releases whole characters as they complete.
    """
    system = {
        "role": "system",
        "content": (
            "You are the assistant of an enterprise chat platform. Employees ask you about "
            "their work: processes, tools, writing and planning. Answer in the language of the "
            "question, in full sentences, with concrete steps where they help."
        ),
    }
    messages = ask("请详细介绍一下如何做好季度预算评审。", system)

    generation = engine.submit(ChatRequest(messages=messages, sampling=GREEDY))
    pieces = list(generation)
    direct_llama = llama_cpp.Llama(model_path=spec.path, n_ctx=spec.n_ctx, verbose=False)
    try:
        direct = direct_llama.create_chat_completion(
            messages=list(messages),  # type: ignore[arg-type]
            temperature=0.0,
            top_p=GREEDY.top_p,
            top_k=GREEDY.top_k,
            min_p=GREEDY.min_p,
            repeat_penalty=GREEDY.repeat_penalty,
            max_tokens=GREEDY.max_tokens,
        )
    finally:
        direct_llama.close()

    assert "".join(pieces) == direct["choices"][0]["message"]["content"]  # type: ignore[index]
    assert "".join(pieces).startswith("如何在工作中实oliberal地为")
    assert all("\ufffd" not in piece for piece in pieces)


def test_seeded_sampling_uses_per_sequence_chains(
    engine: BatchingEngine, single_stream: LlamaEngine
) -> None:
    # Given requests with different temperatures and seeds
    samplings = [
        SamplingParams(temperature=0.9, top_k=50, top_p=0.9, max_tokens=20, seed=7),
        SamplingParams(temperature=0.6, min_p=0.1, repeat_penalty=1.3, max_tokens=20, seed=11),
        SamplingParams(temperature=0.0, max_tokens=20),
    ]
    requests = [ChatRequest(messages=ask("Tell me about tea."), sampling=s) for s in samplings]

    # When they run together, and each alone in the single-stream engine
    together = consume_all([engine.submit(request) for request in requests])
    alone = ["".join(single_stream.submit(request)) for request in requests]

    # Then each sequence sampled with its own parameters and RNG, as it would alone
    assert together == alone
    assert len(set(together)) == 3


def test_single_slot_engine_is_the_single_stream_fallback(
    single_slot: BatchingEngine, single_stream: LlamaEngine
) -> None:
    # Given two requests submitted at once to a one-slot engine
    requests = [ChatRequest(messages=ask(q), sampling=GREEDY) for q in QUESTIONS[:2]]
    first, second = (single_slot.submit(request) for request in requests)

    # When both are read
    texts = consume_all([first, second])

    # Then they ran one after the other, with the single-stream engine's answers
    assert second.prefilled_at is not None and first.stats.finished_at is not None
    assert second.prefilled_at > first.stats.finished_at
    assert texts == ["".join(single_stream.submit(request)) for request in requests]


def test_long_prefill_does_not_delay_a_short_request(
    spec: ModelSpec, single_stream: LlamaEngine
) -> None:
    # Given an engine whose batch holds 32 tokens, and a prompt needing many chunks
    long_prompt = ask("Summarise this log:\n" + "disk usage warning on node seven\n" * 25)
    short_prompt = ask("Say hi.")
    sampling = SamplingParams(temperature=0.0, max_tokens=4)
    with BatchingEngine(replace(spec, n_batch=32), slots=2, prefix_cache_size=0) as small_batch:
        long = small_batch.submit(ChatRequest(messages=long_prompt, sampling=sampling))
        assert long.stats.prompt_tokens > 4 * 32

        # When a short request arrives right behind it
        short = small_batch.submit(ChatRequest(messages=short_prompt, sampling=sampling))
        long_text, _ = consume_all([long, short])

    # Then the short one's first token came out before the long prompt was even prefilled
    assert short.stats.first_token_at is not None and long.prefilled_at is not None
    assert short.stats.first_token_at < long.prefilled_at
    assert long.stats.finish_reason == short.stats.finish_reason == "length"
    # and prefilling in small chunks changed nothing (the single-stream engine uses 512)
    assert long_text == "".join(single_stream.submit(long.request))


def test_cancel_mid_stream_frees_the_slot_for_a_queued_request(single_slot: BatchingEngine) -> None:
    # Given a one-slot engine streaming a long answer, and a request queued behind it
    running = single_slot.submit(
        ChatRequest(messages=STORY, sampling=replace(GREEDY, max_tokens=400))
    )
    stream = iter(running)
    for _ in range(3):
        next(stream)
    queued = single_slot.submit(ChatRequest(messages=ask("Say hi."), sampling=GREEDY))
    assert queued.queue_position == 1
    assert single_slot.queue_depth() == 1

    # When another thread cancels the running one
    canceller = threading.Thread(target=running.cancel)
    canceller.start()
    canceller.join()
    rest = list(stream)
    answer = "".join(queued)

    # Then it ends within a step or two, and the queued request gets the slot right after
    assert running.stats.finish_reason == "cancelled"
    assert len(rest) <= 2
    assert running.stats.completion_tokens < 10
    assert answer
    assert queued.queue_position == 0
    assert queued.prefilled_at is not None and running.stats.finished_at is not None
    assert queued.prefilled_at > running.stats.finished_at
    assert single_slot.snapshot().kv_cells_in_use == 0


def test_dropping_a_half_read_generation_frees_its_slot(single_slot: BatchingEngine) -> None:
    stream = iter(single_slot.submit(ChatRequest(messages=STORY, sampling=GREEDY)))
    next(stream)
    del stream  # the generator's cleanup cancels the generation

    answer = "".join(single_slot.submit(ChatRequest(messages=ask("Say hi."), sampling=GREEDY)))

    assert answer


def test_cancelling_a_queued_request_ends_it_without_tokens(single_slot: BatchingEngine) -> None:
    running = single_slot.submit(ChatRequest(messages=STORY, sampling=GREEDY))
    queued = single_slot.submit(ChatRequest(messages=STORY, sampling=GREEDY))

    queued.cancel()

    assert list(queued) == []
    assert queued.stats.finish_reason == "cancelled"
    assert queued.stats.completion_tokens == 0
    assert "".join(running)
    assert running.stats.finish_reason == "length"


def test_deadlines_stop_queued_and_running_requests(engine: BatchingEngine) -> None:
    expired = ChatRequest(messages=STORY, sampling=GREEDY, deadline=time.monotonic() - 1)
    sampling = replace(GREEDY, max_tokens=600)
    short = ChatRequest(messages=STORY, sampling=sampling, deadline=time.monotonic() + 0.5)

    expired_generation = engine.submit(expired)
    short_generation = engine.submit(short)
    pieces = consume_all([expired_generation, short_generation])

    assert pieces[0] == ""
    assert expired_generation.stats.finish_reason == "deadline"
    assert expired_generation.stats.completion_tokens == 0
    assert short_generation.stats.finish_reason == "deadline"
    assert short_generation.stats.completion_tokens < sampling.max_tokens


def test_queue_positions_and_wait_estimates_follow_the_queue(single_slot: BatchingEngine) -> None:
    # Given a busy one-slot engine and three queued requests
    running = single_slot.submit(
        ChatRequest(messages=STORY, sampling=replace(GREEDY, max_tokens=200))
    )
    stream = iter(running)
    next(stream)
    queued = [single_slot.submit(ChatRequest(messages=STORY, sampling=GREEDY)) for _ in range(3)]

    # Then each knows its place, and the estimate grows with the queue
    assert [generation.queue_position for generation in queued] == [1, 2, 3]
    assert single_slot.queue_depth() == 3
    assert single_slot.estimated_wait_seconds() > 0
    load = single_slot.load()
    assert (load.slots, load.running, load.waiting) == (1, 1, 3)
    assert load.estimated_wait_seconds > 0

    # When the first queued one is cancelled, the others move up
    queued[0].cancel()
    wait_until(lambda: queued[1].queue_position == 1)
    assert queued[2].queue_position == 2
    assert single_slot.queue_depth() == 2

    for generation in (running, *queued):
        generation.cancel()
    list(stream)
    consume_all(queued)
    assert single_slot.queue_depth() == 0
    assert single_slot.estimated_wait_seconds() == 0


def test_stop_strings_end_the_answer_like_the_single_stream_engine(
    engine: BatchingEngine, single_stream: LlamaEngine
) -> None:
    sampling = SamplingParams(temperature=0.0, max_tokens=48)
    full = "".join(engine.submit(ChatRequest(messages=STORY, sampling=sampling)))
    word = full.split()[5]
    with_stop = ChatRequest(messages=STORY, sampling=replace(sampling, stop=(word,)))

    stopped = engine.submit(with_stop)
    pieces = list(stopped)

    assert "".join(pieces) == full[: full.index(word)]
    assert "".join(pieces) == "".join(single_stream.submit(with_stop))
    assert stopped.stats.finish_reason == "stop"
    assert all(pieces)


def test_shared_system_prompt_is_reused_with_identical_output(
    engine: BatchingEngine, single_slot: BatchingEngine
) -> None:
    # Given a bot's system prompt, seen once by the engine
    first = ask("How do I reset my password?", BOT_SYSTEM)
    "".join(engine.submit(ChatRequest(messages=first, sampling=GREEDY)))
    # When another employee asks something else under the same system prompt
    request = ChatRequest(messages=ask("Can I expense a taxi?", BOT_SYSTEM), sampling=GREEDY)
    warm = engine.submit(request)
    warm_text = "".join(warm)

    # Then the system prompt's KV was copied, not recomputed, and the answer is the cold one
    assert warm.cached_tokens >= MIN_PREFIX_REUSE
    assert warm.cached_tokens < warm.stats.prompt_tokens
    cold = single_slot.submit(request)
    assert "".join(cold) == warm_text
    assert cold.cached_tokens == 0


def test_requests_arriving_together_compute_their_shared_prefix_once(
    engine: BatchingEngine, single_slot: BatchingEngine
) -> None:
    # Given three requests under a system prompt the engine has never seen, submitted at once
    system = {
        "role": "system",
        "content": (
            "Finance bot here. You explain the expense policy, payment dates and approval "
            "chains to employees of the company, briefly and precisely."
        ),
    }
    questions = ("Who approves my travel?", "When are expenses paid?", "Where is the form?")
    requests = [ChatRequest(messages=ask(q, system), sampling=GREEDY) for q in questions]
    generations = [engine.submit(request) for request in requests]

    # When they run
    texts = consume_all(generations)

    # Then the first computed the shared prefix and the others copied it, with no change
    # to their answers
    assert generations[0].cached_tokens == 0
    assert all(g.cached_tokens >= MIN_PREFIX_REUSE for g in generations[1:])
    assert texts == ["".join(single_slot.submit(request)) for request in requests]


def test_next_turn_reuses_the_conversation_cache(
    engine: BatchingEngine, single_slot: BatchingEngine
) -> None:
    # Given a finished first turn
    turn_one = (BOT_SYSTEM, {"role": "user", "content": "My laptop will not start."})
    first = engine.submit(ChatRequest(messages=turn_one, sampling=GREEDY))
    answer = "".join(first)

    # When the employee follows up in the same conversation
    turn_two = (
        *turn_one,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "It is still broken."},
    )
    request = ChatRequest(messages=turn_two, sampling=GREEDY)
    second = engine.submit(request)
    second_text = "".join(second)

    # Then at least the whole first prompt came from the cache, and the answer is the cold one
    assert second.cached_tokens >= first.stats.prompt_tokens
    assert second_text == "".join(single_slot.submit(request))


def test_memory_stays_bounded_under_churn(spec: ModelSpec) -> None:
    # Given an engine with two cache ids and fifty requests with distinct system prompts
    sampling = SamplingParams(temperature=0.0, max_tokens=2)

    def request(index: int) -> ChatRequest:
        system = {"role": "system", "content": f"You are assistant number {index} of the team."}
        return ChatRequest(messages=ask("Hi.", system), sampling=sampling)

    with BatchingEngine(replace(spec, n_ctx=256), slots=4, prefix_cache_size=2) as churned:
        # When they all run, in two waves
        first_wave = [churned.submit(request(i)) for i in range(25)]
        consume_all(first_wave)
        after_first_wave = churned.snapshot()
        second_wave = [churned.submit(request(i)) for i in range(25, 50)]
        consume_all(second_wave)
        after_second_wave = churned.snapshot()
        longest = max(g.stats.prompt_tokens for g in (*first_wave, *second_wave))

        # Then only the LRU's two prefixes stay cached, and the used cells do not grow
        for snapshot in (after_first_wave, after_second_wave):
            assert snapshot.running == snapshot.waiting == 0
            assert snapshot.cached_prefixes == 2
            assert snapshot.kv_cells_in_use <= 2 * (longest + sampling.max_tokens)
        assert after_second_wave.kv_cells_in_use <= after_first_wave.kv_cells_in_use + 2
        # and the most recently used prefix is the one still cached
        recent = churned.submit(request(49))
        evicted = churned.submit(request(0))
        consume_all([recent, evicted])
        assert recent.cached_tokens >= MIN_PREFIX_REUSE
        assert evicted.cached_tokens < MIN_PREFIX_REUSE


def test_submit_is_thread_safe_under_many_submitters(engine: BatchingEngine) -> None:
    # Given twelve threads submitting at the same moment to a four-slot engine
    questions = [f"Give me one word that rhymes with number {i}." for i in range(12)]
    sampling = SamplingParams(temperature=0.0, max_tokens=6)
    expected = {q: "".join(engine.submit(ChatRequest(ask(q), sampling))) for q in questions[:3]}
    start = threading.Barrier(len(questions))
    answers: dict[str, str] = {}

    def submit_and_read(question: str) -> None:
        start.wait()
        answers[question] = "".join(engine.submit(ChatRequest(ask(question), sampling)))

    threads = [threading.Thread(target=submit_and_read, args=(q,)) for q in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_SECONDS)

    # Then every one is answered, and queued ones get the same answers as unqueued ones
    assert len(answers) == len(questions)
    assert all(answers.values())
    assert {q: answers[q] for q in expected} == expected


def test_submit_validates_before_queueing(engine: BatchingEngine) -> None:
    with pytest.raises(EngineError, match="tokens but only"):
        engine.submit(ChatRequest(messages=ask("word " * 2000), sampling=GREEDY))
    with pytest.raises(EngineError, match="max_tokens"):
        engine.submit(ChatRequest(messages=ask("Hi"), sampling=replace(GREEDY, max_tokens=0)))
    assert engine.count_tokens("Hello world") > 0
    assert "<|im_start|>" in engine.render_prompt(ask("Hi"))


def test_close_cancels_work_and_refuses_new_requests(spec: ModelSpec) -> None:
    closing = BatchingEngine(spec, slots=1, prefix_cache_size=0)
    running = closing.submit(ChatRequest(messages=STORY, sampling=replace(GREEDY, max_tokens=300)))
    queued = closing.submit(ChatRequest(messages=STORY, sampling=GREEDY))
    stream = iter(running)
    next(stream)

    closing.close()

    list(stream)
    assert running.stats.finish_reason == "cancelled"
    assert list(queued) == []
    assert queued.stats.finish_reason == "cancelled"
    with pytest.raises(EngineError, match="closed"):
        closing.submit(ChatRequest(messages=ask("Hi"), sampling=GREEDY))


def test_registry_picks_the_engine_by_slots(spec: ModelSpec) -> None:
    registry.close_all()
    try:
        batching = registry.get_engine(replace(spec, n_ctx=256, slots=2, prefix_cache_size=1))
        single = registry.get_engine(replace(spec, n_ctx=256, slots=1))
        assert isinstance(batching, BatchingEngine)
        assert (batching.slots, batching.prefix_cache_size) == (2, 1)
        assert isinstance(single, LlamaEngine)
    finally:
        registry.close_all()
    with pytest.raises(EngineError, match="at least one slot"):
        BatchingEngine(spec, slots=0)

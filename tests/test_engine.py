"""The llama.cpp engine against the real bundled model: streaming, stopping, budgeting, caching."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import llama_cpp
import pytest

from apps.inference.engine import registry
from apps.inference.engine.base import (
    ChatRequest,
    Engine,
    EngineError,
    GenerationStats,
    ModelSpec,
    SamplingParams,
)
from apps.inference.engine.llama import LlamaEngine, LlamaGeneration, gpu_offload_supported

REPO = Path(__file__).resolve().parent.parent
MODEL_PATH = os.environ.get(
    "WECOM_AI_MODEL_PATH", str(REPO / "var" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
)
N_CTX = 1024
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
SYSTEM = {"role": "system", "content": "You are a concise assistant."}
# Greedy SmolLM2 answers this with a long story, so it runs until max_tokens unless stopped.
STORY = ({"role": "user", "content": "Write a long story about a dragon and a knight."},)


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    if not os.path.isfile(MODEL_PATH):
        pytest.fail(f"Model not found at {MODEL_PATH}; set WECOM_AI_MODEL_PATH")
    return ModelSpec(path=MODEL_PATH, n_ctx=N_CTX)


@pytest.fixture(scope="module")
def engine(spec: ModelSpec) -> Iterator[LlamaEngine]:
    with LlamaEngine(spec) as loaded:
        yield loaded


@pytest.fixture
def clean_registry() -> Iterator[None]:
    registry.close_all()
    yield
    registry.close_all()


def ask(content: str) -> tuple[dict[str, str], ...]:
    return (SYSTEM, {"role": "user", "content": content})


def run(engine: Engine, request: ChatRequest) -> tuple[list[str], GenerationStats]:
    generation = engine.submit(request)
    pieces = list(generation)
    return pieces, generation.stats


@pytest.mark.parametrize(
    "question", ["What is the capital of France?", "请用中文介绍一下长城。"], ids=["en", "zh"]
)
def test_greedy_output_is_deterministic_and_matches_llama_cpp(
    engine: LlamaEngine, spec: ModelSpec, question: str
) -> None:
    # Given a greedy request
    request = ChatRequest(messages=ask(question), sampling=GREEDY)

    # When it runs twice through the engine and once through llama-cpp-python directly
    first, first_stats = run(engine, request)
    second, _ = run(engine, request)
    direct_llama = llama_cpp.Llama(
        model_path=spec.path, n_ctx=spec.n_ctx, n_batch=spec.n_batch, verbose=False
    )
    try:
        direct = direct_llama.create_chat_completion(
            messages=list(request.messages),  # type: ignore[arg-type]
            temperature=0.0,
            top_p=GREEDY.top_p,
            top_k=GREEDY.top_k,
            min_p=GREEDY.min_p,
            repeat_penalty=GREEDY.repeat_penalty,
            max_tokens=GREEDY.max_tokens,
        )
    finally:
        direct_llama.close()

    # Then all three agree, streamed pieces included (the zh case checks that
    # multibyte characters split across tokens survive streaming)
    text = "".join(first)
    assert text
    assert "".join(second) == text
    assert direct["choices"][0]["message"]["content"] == text  # type: ignore[index]
    assert first_stats.finish_reason == direct["choices"][0]["finish_reason"]  # type: ignore[index]
    assert first_stats.prompt_tokens == direct["usage"]["prompt_tokens"]  # type: ignore[index]


def test_streaming_yields_pieces_that_add_up_to_the_answer(engine: LlamaEngine) -> None:
    request = ChatRequest(messages=STORY, sampling=GREEDY)

    pieces, stats = run(engine, request)

    assert len(pieces) >= 5
    assert all(pieces)
    assert stats.finish_reason == "length"
    # Without streaming, the same request gives the concatenation.
    generation = engine.submit(request)
    assert "".join(generation) == "".join(pieces)


def test_max_tokens_finishes_with_length_and_fills_stats(engine: LlamaEngine) -> None:
    # Given a request allowed only five tokens
    request = ChatRequest(messages=STORY, sampling=SamplingParams(temperature=0.0, max_tokens=5))
    before = time.monotonic()

    # When it runs to the end
    pieces, stats = run(engine, request)

    # Then it stops for length, with every stat filled in
    assert pieces
    assert stats.finish_reason == "length"
    assert stats.completion_tokens == 5
    assert stats.prompt_tokens == engine._prompt_tokens(STORY)
    assert stats.prompt_tokens > engine.count_tokens(STORY[0]["content"])
    assert stats.first_token_at is not None and stats.finished_at is not None
    assert before <= stats.first_token_at <= stats.finished_at


def test_natural_stop_reports_stop(engine: LlamaEngine) -> None:
    request = ChatRequest(messages=ask("Say hi."), sampling=SamplingParams(temperature=0.0))

    pieces, stats = run(engine, request)

    assert stats.finish_reason == "stop"
    assert 0 < stats.completion_tokens < 512
    assert "".join(pieces).strip()


def test_stop_string_ends_the_answer_before_it(engine: LlamaEngine) -> None:
    sampling = SamplingParams(temperature=0.0, max_tokens=64)
    full = "".join(engine.submit(ChatRequest(messages=STORY, sampling=sampling)))
    word = full.split()[5]

    with_stop = ChatRequest(messages=STORY, sampling=replace(sampling, stop=(word,)))
    stopped = "".join(engine.submit(with_stop))

    assert stopped == full[: full.index(word)]


def test_cancel_mid_stream_stops_within_a_few_tokens(engine: LlamaEngine) -> None:
    # Given a long generation that has produced three pieces
    request = ChatRequest(messages=STORY, sampling=SamplingParams(temperature=0.0, max_tokens=200))
    generation = engine.submit(request)
    stream = iter(generation)
    for _ in range(3):
        next(stream)

    # When another thread cancels it
    canceller = threading.Thread(target=generation.cancel)
    canceller.start()
    canceller.join()
    rest = list(stream)

    # Then it ends at once with "cancelled"
    assert len(rest) <= 2
    assert generation.stats.finish_reason == "cancelled"
    assert 3 <= generation.stats.completion_tokens <= 6
    assert generation.stats.finished_at is not None


def test_cancel_while_queued_behind_another_generation(engine: LlamaEngine) -> None:
    # Given a generation holding the context (started, not finished)
    running = engine.submit(ChatRequest(messages=STORY, sampling=GREEDY))
    running_stream = iter(running)
    next(running_stream)
    queued = engine.submit(ChatRequest(messages=STORY, sampling=GREEDY))
    pieces: list[str] = []
    waiter = threading.Thread(target=lambda: pieces.extend(queued))

    # When a second one waiting for the context is cancelled
    waiter.start()
    deadline = time.monotonic() + 10
    while engine.load().waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    load = engine.load()
    assert (load.slots, load.running, load.waiting) == (1, 1, 1)
    queued.cancel()
    waiter.join(timeout=10)

    # Then it gives up without generating, and the first one is unaffected
    assert not waiter.is_alive()
    assert pieces == []
    assert queued.stats.finish_reason == "cancelled"
    assert queued.stats.completion_tokens == 0
    assert engine.load().waiting == 0
    list(running_stream)
    assert running.stats.finish_reason == "length"
    assert engine.load().running == 0


def test_dropping_a_half_read_generation_frees_the_context(engine: LlamaEngine) -> None:
    stream = iter(engine.submit(ChatRequest(messages=STORY, sampling=GREEDY)))
    next(stream)
    del stream

    pieces, stats = run(engine, ChatRequest(messages=STORY, sampling=GREEDY))

    assert pieces
    assert stats.finish_reason == "length"


def test_deadline_stops_generation(engine: LlamaEngine) -> None:
    # Given one request already past its deadline and one that expires mid-stream
    expired = ChatRequest(messages=STORY, sampling=GREEDY, deadline=time.monotonic() - 1)
    sampling = SamplingParams(temperature=0.0, max_tokens=400)
    short = ChatRequest(messages=STORY, sampling=sampling, deadline=time.monotonic() + 0.5)

    # When both run
    expired_pieces, expired_stats = run(engine, expired)
    _, short_stats = run(engine, short)

    # Then neither runs to max_tokens; both report "deadline"
    assert expired_pieces == []
    assert expired_stats.finish_reason == "deadline"
    assert expired_stats.completion_tokens == 0
    assert short_stats.finish_reason == "deadline"
    assert short_stats.completion_tokens < sampling.max_tokens


def test_history_is_truncated_from_the_oldest_message(engine: LlamaEngine) -> None:
    # Given a long conversation that cannot fit next to a large max_tokens
    history = []
    for turn in range(12):
        history.append({"role": "user", "content": f"Question {turn}: " + "tell me more " * 8})
        history.append({"role": "assistant", "content": f"Answer {turn}: " + "here is more " * 8})
    final = {"role": "user", "content": "And finally, what is two plus two?"}
    messages = (SYSTEM, *history, final)
    sampling = SamplingParams(temperature=0.0, max_tokens=N_CTX - 300)
    assert engine._prompt_tokens(messages) > 300

    # When it is submitted
    generation = engine.submit(ChatRequest(messages=messages, sampling=sampling))

    # Then the system and final messages stay, the newest history fits, and turns stay paired
    kept = generation.messages
    assert kept[0] == SYSTEM
    assert kept[-1] == final
    assert 3 <= len(kept) < len(messages)
    assert kept[1:-1] == history[len(history) - (len(kept) - 2) :]
    assert kept[1]["role"] == "user"
    assert generation.stats.prompt_tokens == engine._prompt_tokens(kept) <= 300
    generation.cancel()
    assert list(generation) == []


def test_short_conversation_is_not_truncated(engine: LlamaEngine) -> None:
    messages = ask("Hello")
    assert engine.submit(ChatRequest(messages=messages, sampling=GREEDY)).messages == list(messages)


def test_prompt_that_cannot_fit_raises_engine_error(engine: LlamaEngine) -> None:
    messages = ask("word " * 2000)

    with pytest.raises(EngineError, match="tokens but only"):
        engine.submit(ChatRequest(messages=messages, sampling=GREEDY))


def test_missing_model_file_raises_engine_error_with_the_path(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.gguf")

    with pytest.raises(EngineError, match=re.escape(path)):
        LlamaEngine(ModelSpec(path=path))


def test_unloadable_model_file_raises_engine_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file")

    with pytest.raises(EngineError, match=re.escape(str(path))):
        LlamaEngine(ModelSpec(path=str(path)))


def test_closed_engine_refuses_requests(spec: ModelSpec) -> None:
    engine = LlamaEngine(spec)
    engine.close()

    with pytest.raises(EngineError, match="closed"):
        engine.submit(ChatRequest(messages=ask("Hi"), sampling=GREEDY))


def test_two_threads_submitting_concurrently_both_complete(engine: LlamaEngine) -> None:
    # Given two requests and their answers when run one after the other
    requests = [
        ChatRequest(messages=ask("Name three colors."), sampling=GREEDY),
        ChatRequest(messages=ask("Name three animals."), sampling=GREEDY),
    ]
    sequential = ["".join(engine.submit(request)) for request in requests]
    assert sequential[0] != sequential[1]
    results: dict[int, str] = {}
    start = threading.Barrier(2)

    def answer(index: int) -> None:
        start.wait()
        results[index] = "".join(engine.submit(requests[index]))

    # When both run at the same time from two threads
    threads = [threading.Thread(target=answer, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Then each gets exactly its own answer
    assert [results.get(0), results.get(1)] == sequential


def test_chat_template_override_changes_the_prompt(engine: LlamaEngine, spec: ModelSpec) -> None:
    # Given the same model with a plain-text chat template instead of the GGUF's ChatML one
    template = (
        "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant:{% endif %}"
    )
    messages = ask("Hello")

    with LlamaEngine(ModelSpec(path=spec.path, n_ctx=N_CTX, chat_template=template)) as custom:
        # When the prompt is rendered and answered
        prompt = custom.render_prompt(messages)
        prompt_tokens = custom.count_tokens(prompt)
        pieces, stats = run(custom, ChatRequest(messages=messages, sampling=GREEDY))

    # Then the override was used
    assert "<|im_start|>" in engine.render_prompt(messages)
    assert prompt == ("### system: You are a concise assistant.\n### user: Hello\n### assistant:")
    assert stats.prompt_tokens == prompt_tokens  # the template has no special tokens
    assert pieces


def test_chat_format_passes_through(spec: ModelSpec) -> None:
    with LlamaEngine(ModelSpec(path=spec.path, n_ctx=256, chat_format="zephyr")) as zephyr:
        assert "<|user|>" in zephyr.render_prompt(ask("Hello"))

    with pytest.raises(EngineError, match="Unknown chat format"):
        LlamaEngine(ModelSpec(path=spec.path, n_ctx=256, chat_format="no-such-format"))


def test_count_tokens(engine: LlamaEngine) -> None:
    assert engine.count_tokens("") == 0
    assert 0 < engine.count_tokens("Hello world") < engine.count_tokens("Hello world " * 5)


def test_gpu_offload_supported_reports_the_build() -> None:
    assert gpu_offload_supported() is bool(llama_cpp.llama_supports_gpu_offload())


def test_registry_returns_the_same_engine_until_closed(
    spec: ModelSpec, clean_registry: None
) -> None:
    first = registry.get_engine(spec)

    assert registry.get_engine(spec) is first
    assert registry.loaded_specs() == [spec]

    registry.close_all()
    assert registry.loaded_specs() == []
    assert registry.get_engine(spec) is not first


def test_registry_loads_once_when_threads_race(spec: ModelSpec, clean_registry: None) -> None:
    # Given a factory that counts loads, and four threads asking at the same moment
    loads: list[ModelSpec] = []

    def counting_factory(requested: ModelSpec) -> Engine:
        loads.append(requested)
        time.sleep(0.2)  # widen the race window
        return LlamaEngine(requested)

    previous = registry.register_engine_factory(counting_factory)
    start = threading.Barrier(4)
    engines: list[Engine] = []

    def fetch() -> None:
        start.wait()
        engines.append(registry.get_engine(spec))

    try:
        threads = [threading.Thread(target=fetch) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        registry.register_engine_factory(previous)

    # Then the model was loaded once and shared
    assert loads == [spec]
    assert len(engines) == 4
    assert all(engine is engines[0] for engine in engines)


def test_registry_does_not_cache_failed_loads(tmp_path: Path, clean_registry: None) -> None:
    missing = ModelSpec(path=str(tmp_path / "missing.gguf"))

    with pytest.raises(EngineError):
        registry.get_engine(missing)

    assert registry.loaded_specs() == []


@pytest.mark.slow  # forks the test process
def test_forked_child_loads_its_own_engine(spec: ModelSpec, clean_registry: None) -> None:
    # Given an engine loaded in this (parent) process. One thread: this pytest process has
    # already run OpenMP parallel regions, which libgomp cannot run again in a forked child.
    single_thread = replace(spec, n_threads=1)
    parent_engine = registry.get_engine(single_thread)
    request = ChatRequest(messages=ask("Hi"), sampling=SamplingParams(temperature=0, max_tokens=4))
    parent_text = "".join(parent_engine.submit(request))
    read_end, write_end = os.pipe()

    # When a forked child asks the registry for the same spec
    pid = os.fork()
    if pid == 0:  # child: report through the pipe and never return into pytest
        try:
            os.close(read_end)
            with os.fdopen(write_end, "w") as pipe:
                json.dump(child_report(single_thread, parent_engine, request), pipe)
        finally:
            os._exit(0)
    os.close(write_end)
    ready: list[object] = []
    try:
        with os.fdopen(read_end) as pipe:
            ready, _, _ = select.select([pipe], [], [], 120)
            report = json.loads(pipe.read()) if ready else {"error": "child timed out"}
    finally:
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    # Then the child built a fresh engine in its own process, which works
    assert "error" not in report, report
    assert report["same_object"] is False
    assert report["engine_pid"] == report["child_pid"] == pid
    assert report["loaded"] == 1
    assert report["text"] == parent_text
    # and the parent still has (and can use) its own engine
    assert registry.get_engine(single_thread) is parent_engine
    assert parent_engine.pid == os.getpid()


def child_report(spec: ModelSpec, parent_engine: Engine, request: ChatRequest) -> dict[str, object]:
    try:
        child_engine = registry.get_engine(spec)
        return {
            "same_object": child_engine is parent_engine,
            "engine_pid": getattr(child_engine, "pid", None),
            "child_pid": os.getpid(),
            "loaded": len(registry.loaded_specs()),
            "text": "".join(child_engine.submit(request)),
        }
    except BaseException as exc:
        return {"error": repr(exc)}


def test_submit_returns_before_generating(engine: LlamaEngine) -> None:
    generation = engine.submit(ChatRequest(messages=STORY, sampling=GREEDY))

    assert isinstance(generation, LlamaGeneration)
    assert generation.stats.finish_reason is None
    assert generation.stats.completion_tokens == 0
    generation.cancel()
    assert list(generation) == []
    assert generation.stats.finish_reason == "cancelled"
    with pytest.raises(RuntimeError):
        iter(generation)

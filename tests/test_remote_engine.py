"""The remote engine against a real OpenAI-compatible server (`llama_cpp.server` serving the
bundled model on loopback): streaming, the API key, the concurrency limit and its queue,
cancellation, deadlines and retries. The chunk translation is checked on its own too."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from apps.inference.engine.base import (
    ChatRequest,
    EngineError,
    FinishReason,
    RemoteSpec,
    SamplingParams,
)
from apps.inference.engine.remote import RemoteEngine, _DeltaTranslator, remote_health
from apps.inference.engine.think import ThinkSplitter
from tests.openai_server import API_KEY, MODEL_ALIAS, OpenAIServer, free_port

QUESTION = ({"role": "user", "content": "Tell me a short story about a cat."},)


def _spec(server: OpenAIServer, **overrides: object) -> RemoteSpec:
    fields: dict[str, object] = {
        "base_url": server.base_url,
        "model": MODEL_ALIAS,
        "api_key": API_KEY,
        "concurrency": 2,
    }
    fields.update(overrides)
    return RemoteSpec(**fields)  # type: ignore[arg-type]


def _request(max_tokens: int = 24, deadline: float | None = None) -> ChatRequest:
    return ChatRequest(
        messages=QUESTION,
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        deadline=deadline,
    )


@pytest.mark.slow
def test_streams_the_same_answer_the_server_gives_directly(openai_server):
    direct = httpx.post(
        f"{openai_server.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        json={"model": MODEL_ALIAS, "messages": list(QUESTION), "max_tokens": 24,
              "temperature": 0.0, "top_p": 0.95},
        timeout=60,
        trust_env=False,
    ).json()  # fmt: skip
    with RemoteEngine(_spec(openai_server)) as engine:
        generation = engine.submit(_request())
        pieces = list(generation)
    assert len(pieces) > 1  # streamed piece by piece, not in one block
    assert "".join(pieces) == direct["choices"][0]["message"]["content"]
    stats = generation.stats
    assert stats.finish_reason == FinishReason.LENGTH
    assert stats.completion_tokens == 24
    assert stats.first_token_at is not None and stats.finished_at is not None
    assert generation.attempts == 1


@pytest.mark.slow
def test_a_wrong_api_key_fails_at_once_without_retries(openai_server):
    with RemoteEngine(_spec(openai_server, api_key="wrong", retries=3)) as engine:
        generation = engine.submit(_request())
        with pytest.raises(EngineError, match="401"):
            list(generation)
    assert generation.attempts == 1
    assert generation.stats.finish_reason == FinishReason.ERROR


@pytest.mark.slow
def test_requests_over_the_concurrency_limit_wait_in_line_with_their_position(openai_server):
    with RemoteEngine(_spec(openai_server, concurrency=1)) as engine:
        first = engine.submit(_request(max_tokens=8))
        second = engine.submit(_request(max_tokens=8))
        third = engine.submit(_request(max_tokens=8))
        assert (first.queue_position, second.queue_position, third.queue_position) == (0, 1, 2)
        load = engine.load()
        assert (load.slots, load.running, load.waiting) == (1, 1, 2)
        heard: list[int] = []
        third.queue_watch(heard.append)
        assert "".join(first)
        assert (second.queue_position, third.queue_position) == (0, 1)
        assert "".join(second)
        assert "".join(third)
        assert heard == [1, 0]
        assert engine.load().running == 0
        # Once an answer ran its course, a wait is estimated from answer durations.
        engine.submit(_request(max_tokens=8))
        assert engine.submit(_request(max_tokens=8)).queue_position == 1
        assert engine.load().estimated_wait_seconds > 0


@pytest.mark.slow
def test_cancel_closes_the_request_and_the_server_stops(openai_server):
    with RemoteEngine(_spec(openai_server)) as engine:
        generation = engine.submit(_request(max_tokens=1000))
        pieces = []
        for piece in generation:
            pieces.append(piece)
            if len(pieces) == 3:
                threading.Thread(target=generation.cancel).start()
        assert generation.stats.finish_reason == FinishReason.CANCELLED
        assert generation.stats.completion_tokens < 1000
        assert engine.load().running == 0
    deadline = time.monotonic() + 30
    while "Disconnected from client" not in openai_server.log():
        assert time.monotonic() < deadline, openai_server.log()[-2000:]
        time.sleep(0.1)


@pytest.mark.slow
def test_the_deadline_ends_a_running_and_a_waiting_request(openai_server):
    with RemoteEngine(_spec(openai_server, concurrency=1)) as engine:
        running = engine.submit(_request(max_tokens=1000, deadline=time.monotonic() + 1.0))
        waiting = engine.submit(_request(max_tokens=10, deadline=time.monotonic() + 0.3))
        # The waiting one gives up in line, without ever reaching the server.
        assert list(waiting) == []
        assert waiting.stats.finish_reason == FinishReason.DEADLINE
        assert waiting.attempts == 0
        text = "".join(running)
        assert running.stats.finish_reason == FinishReason.DEADLINE
        assert 0 < running.stats.completion_tokens < 1000
        assert text


def test_reasoning_sent_apart_is_split_like_a_local_models_think_block():
    translator, splitter = _DeltaTranslator(), ThinkSplitter()
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "The user "}}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "asks about leave."}}]},
        {"choices": [{"index": 0, "delta": {"content": "Ten days"}}]},
        {"choices": [{"index": 0, "delta": {"content": " a year."}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}},
    ]
    for chunk in chunks:
        for piece in translator.feed(chunk):
            splitter.feed(piece)
    splitter.finish()
    assert splitter.reasoning == "The user asks about leave."
    assert splitter.answer == "Ten days a year."
    assert translator.finish_reason == FinishReason.STOP
    # vLLM's newer field name, and a cut answer.
    translator = _DeltaTranslator()
    pieces = translator.feed(
        {"choices": [{"index": 0, "delta": {"reasoning": "hm"}, "finish_reason": "length"}]}
    )
    assert pieces == ["<think>hm"] and translator.finish_reason == FinishReason.LENGTH


@pytest.mark.slow
def test_health_check_sees_the_model_the_key_and_a_missing_model(openai_server):
    health = remote_health(spec=_spec(openai_server))
    assert health.ok and MODEL_ALIAS in health.models
    assert remote_health(spec=_spec(openai_server, api_key="wrong")).error == "HTTP 401"
    missing = remote_health(spec=_spec(openai_server, model="no-such-model"))
    assert not missing.ok and "no-such-model" in missing.error


def test_a_server_that_never_answers_fails_after_the_retries():
    spec = RemoteSpec(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", retries=2)
    with RemoteEngine(spec) as engine:
        generation = engine.submit(_request())
        with pytest.raises(EngineError, match="failed 3 times"):
            list(generation)
    assert generation.attempts == 3
    assert generation.stats.finish_reason == FinishReason.ERROR
    assert remote_health(spec=spec).ok is False


@pytest.mark.slow
def test_a_request_is_retried_until_the_server_is_up(tmp_path: Path, settings):
    server = OpenAIServer(model_path=settings.DEFAULT_MODEL_PATH, log_path=tmp_path / "log")
    spec = _spec(server, retries=8)
    engine = RemoteEngine(spec)
    generation = engine.submit(_request(max_tokens=8))
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.extend(generation))
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while generation.attempts < 1:  # the first attempt met a closed port
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.start(wait=False)
        reader.join(timeout=120)
    finally:
        server.stop()
        engine.close()
    assert not reader.is_alive()
    assert generation.attempts > 1
    assert "".join(result)
    assert generation.stats.finish_reason == FinishReason.LENGTH


@pytest.mark.slow
def test_the_queue_notice_shows_a_waiting_remote_requests_place(openai_server):
    from apps.bots.services.queue_notice import QueueNotice
    from apps.bots.streams import StreamFlusher, stream_state_get
    from tests.test_queue_notice import QUEUE_NOTICE, _wait_until

    with RemoteEngine(_spec(openai_server, concurrency=1)) as engine:
        # Given a long answer holding the profile's only slot, and a question behind it
        running = engine.submit(_request(max_tokens=1000))
        stream = iter(running)
        next(stream)
        waiting = engine.submit(_request())
        flusher = StreamFlusher(
            turn_id=0, stream_id="s-remote-queued", deadline=time.time() + 300, interval=0.01
        )
        notice = QueueNotice(generation=waiting, engine=engine, threshold=0, flusher=flusher)
        try:
            with notice:
                # Then the employee's stream shows their place, as with a local engine
                _wait_until(
                    lambda: (
                        (state := stream_state_get("s-remote-queued")) is not None
                        and QUEUE_NOTICE in state.content
                    )
                )
                assert "第 1 位" in stream_state_get("s-remote-queued").content
                thread = notice._thread
                assert thread is not None and thread.is_alive()
                # When the slot frees up, the pushed position 0 ends the notice
                running.cancel()
                list(stream)
                thread.join(timeout=60)
                assert not thread.is_alive()
                assert waiting.queue_position == 0
        finally:
            flusher.stop()
            waiting.cancel()
            list(waiting)

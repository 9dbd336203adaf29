"""The queue notice follows positions the engine pushes, against the real bundled model.

A one-slot batching engine keeps one long answer running while others wait; the notice
writes the waiting employee's place to the stream and ends by itself when the engine
pushes position 0 (admitted), with nobody polling the engine for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from apps.bots.services.queue_notice import QueueNotice
from apps.bots.streams import StreamFlusher, stream_state_get
from apps.inference.engine.base import ChatRequest, ModelSpec, SamplingParams
from apps.inference.engine.batching import BatchingEngine

REPO = Path(__file__).resolve().parent.parent
MODEL_PATH = os.environ.get(
    "WECOM_AI_MODEL_PATH", str(REPO / "var" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
)
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
STORY = ({"role": "user", "content": "Write a long story about a dragon and a knight."},)
QUEUE_NOTICE = "排在第"  # the zh-Hans notice, WeCom replies' default language


@pytest.fixture(scope="module")
def single_slot() -> Iterator[BatchingEngine]:
    if not os.path.isfile(MODEL_PATH):
        pytest.fail(f"Model not found at {MODEL_PATH}; set WECOM_AI_MODEL_PATH")
    with BatchingEngine(
        ModelSpec(path=MODEL_PATH, n_ctx=1024), slots=1, prefix_cache_size=0
    ) as loaded:
        yield loaded


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.01)


def test_the_engine_pushes_each_new_position_to_its_watcher(single_slot):
    # Given a busy one-slot engine and three queued requests, the last one watched
    running = single_slot.submit(
        ChatRequest(messages=STORY, sampling=replace(GREEDY, max_tokens=400))
    )
    stream = iter(running)
    next(stream)
    queued = [single_slot.submit(ChatRequest(messages=STORY, sampling=GREEDY)) for _ in range(3)]
    heard: list[int] = []
    queued[2].queue_watch(heard.append)

    # When the ones ahead of it leave the queue, it hears each new place
    queued[0].cancel()
    _wait_until(lambda: heard == [2])
    queued[1].cancel()
    _wait_until(lambda: heard == [2, 1])
    running.cancel()
    list(stream)
    _wait_until(lambda: heard == [2, 1, 0])  # admitted

    queued[2].cancel()
    list(queued[2])
    for generation in queued[:2]:
        list(generation)


def test_a_waiter_hearing_its_new_place_sees_the_slot_already_taken(single_slot):
    # Given two requests queued on an idle engine before its scheduler admits either
    # (its lock is held while both are submitted), the second one watched
    heard: list[tuple[int, int]] = []
    with single_slot._cond:
        first = single_slot.submit(ChatRequest(messages=STORY, sampling=GREEDY))
        second = single_slot.submit(ChatRequest(messages=STORY, sampling=GREEDY))
        second.queue_watch(lambda position: heard.append((position, single_slot.load().running)))

    # When the scheduler admits the first, the second hears it is next in line, and the
    # load it reads then counts the first as running (a notice deciding "slot free, wait
    # for it" would otherwise stay silent for seconds)
    _wait_until(lambda: bool(heard))
    assert heard[0] == (1, 1)

    list(first)
    list(second)


@pytest.mark.django_db
def test_the_notice_shows_the_place_and_ends_when_admitted(single_slot):
    # Given a running long answer and a question waiting behind it
    running = single_slot.submit(
        ChatRequest(messages=STORY, sampling=replace(GREEDY, max_tokens=400))
    )
    stream = iter(running)
    next(stream)
    waiting = single_slot.submit(ChatRequest(messages=STORY, sampling=GREEDY))
    flusher = StreamFlusher(
        turn_id=0, stream_id="s-queued", deadline=time.time() + 300, interval=0.01
    )
    notice = QueueNotice(generation=waiting, engine=single_slot, threshold=0, flusher=flusher)
    try:
        with notice:
            # Then the stream tells the employee their place at once
            _wait_until(
                lambda: (
                    (state := stream_state_get("s-queued")) is not None
                    and QUEUE_NOTICE in state.content
                )
            )
            assert "第 1 位" in stream_state_get("s-queued").content
            thread = notice._thread
            assert thread is not None and thread.is_alive()

            # When the slot frees up, the pushed position 0 ends the notice by itself
            running.cancel()
            list(stream)
            thread.join(timeout=60)
            assert not thread.is_alive()
            assert waiting.queue_position == 0
    finally:
        flusher.stop()
        waiting.cancel()
        list(waiting)

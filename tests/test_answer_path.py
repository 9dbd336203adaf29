"""The whole answer path: simulator → callback → Celery worker process → llama.cpp → stream.

These start real `celery worker` processes against the test database and Redis and run
the real bundled model; nothing on the path is mocked.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from apps.bots.models import Turn
from apps.bots.selectors import conversation_messages
from tests.conftest import turn_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_mention_streams_a_model_answer_to_the_end(bot, simulator_for, start_worker):
    start_worker()
    sim = simulator_for(bot)
    result = sim.ask("@HR助手 年假怎么算", userid="zhangsan", chatid="grp-hr", timeout=120)
    assert result.finished
    assert result.answer.strip()
    assert result.refreshes >= 1
    turn = turn_terminal(result.msgid)
    assert turn.status == Turn.Status.ANSWERED
    assert turn.answer == result.answer.strip()
    assert turn.attempts == 1
    assert turn.completion_tokens > 0 and turn.prompt_tokens > 0
    assert turn.received_at <= turn.queued_at <= turn.first_token_at <= turn.finished_at
    # Every snapshot WeCom saw was a prefix of the final answer: content grows, never jumps.
    for snapshot in result.snapshots[:-1]:
        assert result.snapshots[-1].startswith(snapshot.rstrip("…").rstrip())


def test_follow_up_question_carries_the_earlier_turn(bot, simulator_for, start_worker):
    start_worker()
    sim = simulator_for(bot)
    first = sim.ask("My name is Aiko. Remember it.", userid="aiko", chatid="grp", timeout=120)
    second = sim.ask("What is my name?", userid="aiko", chatid="grp", timeout=120)
    other_user = sim.ask("What is my name?", userid="bob", chatid="grp", timeout=120)
    assert first.finished and second.finished and other_user.finished
    follow_up = turn_terminal(second.msgid)
    messages = conversation_messages(turn=follow_up)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == "My name is Aiko. Remember it."
    assert messages[2]["content"] == turn_terminal(first.msgid).answer
    # Context is per user and chat: bob's turn sees only his own question.
    bob_turn = turn_terminal(other_user.msgid)
    assert [m["role"] for m in conversation_messages(turn=bob_turn)] == ["system", "user"]


def test_stream_deadline_sends_the_answer_through_response_url(
    make_bot, simulator_for, start_worker, response_server
):
    bot = make_bot(max_tokens=120)
    # A deadline shorter than the answer takes: the stream must finish with a note and the
    # final answer must arrive once through response_url.
    start_worker(WECOM_STREAM_DEADLINE_SECONDS="0.3", WECOM_STREAM_FLUSH_SECONDS="0.05")
    sim = simulator_for(bot)
    result = sim.ask("Explain annual leave rules in detail.", userid="u1", timeout=120,
                     response_wait=60)  # fmt: skip
    assert result.finished
    turn = _wait_terminal(Turn.objects.get())
    assert turn.status == Turn.Status.ANSWERED
    assert "完整" in result.content  # the stream ended with the "full answer follows" note
    assert result.response_url_post is not None
    assert result.response_url_post["markdown"]["content"] == turn.answer
    assert len(response_server.posts(result.msgid)) == 1
    assert turn.response_url_used_at is not None


def _wait_terminal(turn: Turn, timeout: float = 120) -> Turn:
    deadline = time.monotonic() + timeout
    while not turn.is_terminal:
        assert time.monotonic() < deadline, f"turn {turn.pk} stuck in {turn.status}"
        time.sleep(0.2)
        turn.refresh_from_db()
    return turn


def test_worker_death_mid_answer_is_answered_once(bot, simulator_for, start_worker):
    bot.max_tokens = 400
    bot.save()
    worker = start_worker(TURN_LEASE_SECONDS="2", WECOM_STREAM_FLUSH_SECONDS="0.05")
    sim = simulator_for(bot)
    reply = sim.decrypt_reply(sim.post_message(sim.text_message("Tell a long story.", userid="u")))
    stream_id = reply["stream"]["id"]
    deadline = time.monotonic() + 60
    while Turn.objects.get().first_token_at is None:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    children = worker.pool_children()
    assert len(children) == 1
    os.kill(children[0], signal.SIGKILL)  # the pool process dies mid-generation
    deadline = time.monotonic() + 120
    turn = Turn.objects.get()
    while not turn.is_terminal:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
        turn.refresh_from_db()
    assert turn.status == Turn.Status.ANSWERED, turn.error
    assert turn.attempts == 2  # redelivered once, taken over after the lease expired
    final = sim.decrypt_reply(sim.post_message(sim.stream_refresh_message(stream_id, userid="u")))
    assert final["stream"]["finish"] is True
    assert final["stream"]["content"].startswith(turn.answer[:50])

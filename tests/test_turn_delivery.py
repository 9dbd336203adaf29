"""Delivering a finished answer: the stream when it fits, response_url (once) for the rest."""

from __future__ import annotations

import pytest
from django.utils import timezone

from apps.bots.models import Conversation, Turn
from apps.bots.services import deliver
from apps.bots.streams import StreamState, stream_state_get, stream_state_set
from wecom.messages import MAX_CONTENT_BYTES

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def turn(bot, response_server):
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="u1")
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid="m-1",
        stream_id="s-1",
        question="q",
        status=Turn.Status.GENERATING,
        received_at=timezone.now(),
        response_url=response_server.url_for("m-1"),
    )
    stream_state_set(turn.stream_id, StreamState(deadline=timezone.now().timestamp() + 300))
    return turn


def _long_answer() -> str:
    paragraph = "年假按照员工累计工作年限计算，满一年不满十年的，年休假五天。" * 8
    return "\n\n".join(f"{i}. {paragraph}" for i in range(40))


def test_short_answer_finishes_the_stream(turn, response_server):
    deliver.turn_finish(turn=turn, reasoning="", answer="年假五天。")
    state = stream_state_get("s-1")
    assert state == StreamState(content="年假五天。", finish=True, deadline=state.deadline)
    assert response_server.posts("m-1") == []
    turn.refresh_from_db()
    assert turn.status == Turn.Status.ANSWERED and turn.finished_at is not None


def test_long_answer_is_split_at_a_boundary_and_continued_once(turn, response_server):
    answer = _long_answer()
    assert len(answer.encode()) > MAX_CONTENT_BYTES
    deliver.turn_finish(turn=turn, reasoning="", answer=answer)
    state = stream_state_get("s-1")
    assert state.finish is True
    assert len(state.content.encode()) <= MAX_CONTENT_BYTES
    posts = response_server.posts("m-1")
    assert len(posts) == 1
    rest = posts[0]["markdown"]["content"]
    head = state.content.rsplit("\n\n", 1)[0]  # drop the "continued" note
    assert answer.startswith(head) and answer.endswith(rest)
    assert answer[len(head) : len(answer) - len(rest)].strip() == ""  # nothing lost
    assert head.endswith("。")  # cut at a paragraph/sentence end, never mid-sentence
    turn.refresh_from_db()
    assert turn.answer == answer  # stored whole
    assert turn.response_url_used_at is not None and turn.error == ""


def test_response_url_is_never_used_twice(turn, response_server):
    deliver.turn_finish(turn=turn, reasoning="", answer=_long_answer())
    turn.refresh_from_db()
    error = deliver._response_url_deliver(turn=turn, content="again")
    assert error == "response_url already used"
    assert len(response_server.posts("m-1")) == 1


@pytest.mark.parametrize("channel", [c for c in Turn.Channel if c != Turn.Channel.CALLBACK])
def test_other_doors_never_touch_response_url_and_keep_the_whole_answer(
    turn, response_server, channel
):
    # Given a long answer on a turn that came through another door (it carries a
    # response_url only to prove it is left alone)
    Turn.objects.filter(pk=turn.pk).update(channel=channel)
    turn.refresh_from_db()
    answer = _long_answer()
    deliver.turn_finish(turn=turn, reasoning="", answer=answer)
    # Then nothing is posted and no delivery error is recorded: the door sends it all
    assert response_server.posts("m-1") == []
    turn.refresh_from_db()
    assert (turn.status, turn.answer, turn.error) == (Turn.Status.ANSWERED, answer, "")
    assert turn.longconn_rest == "" and turn.response_url_used_at is None


def test_reasoning_goes_to_the_think_block_and_is_stored_apart(turn):
    deliver.turn_finish(turn=turn, reasoning="先查制度", answer="五天。")
    assert stream_state_get("s-1").content == "<think>先查制度</think>五天。"
    turn.refresh_from_db()
    assert (turn.reasoning, turn.answer) == ("先查制度", "五天。")


def test_closed_stream_gets_the_whole_answer_through_response_url(turn, response_server):
    Turn.objects.filter(pk=turn.pk).update(stream_closed_at=timezone.now())
    turn.refresh_from_db()
    deliver.turn_finish(turn=turn, reasoning="", answer="完整答案")
    assert response_server.posts("m-1")[0]["markdown"]["content"] == "完整答案"


def test_failure_apologises_and_records_the_error(turn):
    deliver.turn_fail(turn=turn, error="EngineError: model file missing")
    state = stream_state_get("s-1")
    assert state.finish is True and "抱歉" in state.content
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED
    assert "model file missing" in turn.error


def test_sweep_fails_turns_nobody_answers(turn, settings):
    settings.TURN_GENERATION_TIMEOUT_SECONDS = 0
    Turn.objects.filter(pk=turn.pk).update(
        status=Turn.Status.QUEUED, received_at=timezone.now() - timezone.timedelta(minutes=5)
    )
    assert deliver.turns_sweep() == 1
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED

"""A turn's life on the model: each transition is one conditional UPDATE that wins or loses.

Workers, redelivered tasks, refreshes and the sweeper race for the same row; whichever
transition the database lets through first gives the turn its one end, and the winner's
instance carries what it wrote.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.audit.models import Action, AuditPolicy, LedgerEntry
from apps.bots.models import Conversation, Turn
from apps.bots.selectors import conversation_messages
from apps.bots.services import deliver, generate, receive
from apps.bots.streams import StreamState, stream_state_get, stream_state_set
from apps.knowledge.models import KnowledgeBase
from wecom.messages import InboundMessage

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = dt.timedelta(seconds=30)


def _turn(bot, *, msgid: str = "m-1", **fields) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(bot=bot, chat_type="single", userid="u1")
    values = {
        "bot": bot,
        "conversation": conversation,
        "msgid": msgid,
        "stream_id": f"s-{msgid}",
        "question": "年假怎么算？",
        "received_at": timezone.now(),
    }
    values.update(fields)
    turn = Turn.objects.create(**values)
    stream_state_set(turn.stream_id, StreamState(deadline=timezone.now().timestamp() + 300))
    return turn


def _copy(turn: Turn) -> Turn:
    """Another process's view of the same row (a second worker, the sweeper)."""
    return Turn.objects.get(pk=turn.pk)


def _ledger_entries(turn: Turn) -> int:
    return LedgerEntry.objects.filter(ref__endswith=f":{turn.pk}").count()


# --- claim and lease ---------------------------------------------------------------------------


def test_claim_wins_once_and_refreshes_the_instance(bot):
    turn = _turn(bot)
    other = _copy(turn)

    assert turn.claim(lease=LEASE) is True
    assert (turn.status, turn.attempts) == (Turn.Status.GENERATING, 1)
    assert turn.heartbeat_at is not None

    # A duplicate delivery while the first worker's lease is fresh loses, and learns nothing.
    assert other.claim(lease=LEASE) is False
    assert (other.status, other.attempts, other.heartbeat_at) == (Turn.Status.QUEUED, 0, None)
    assert _copy(turn).attempts == 1


def test_a_claim_before_the_enqueue_stamp_counts_its_queue_wait(bot):
    # Given a worker that loaded the turn before the web process stamped its enqueue (the
    # broker handed the task over first), and the stamp landing just after the claim
    turn = _turn(bot)
    assert turn.queued_at is None
    assert turn.claim(lease=LEASE) is True
    assert Turn.objects.filter(pk=turn.pk).mark_queued(now=timezone.now()) == 0

    # Then the claim recorded the wait as none, and the instance carries it for the
    # queue-wait metric, which counts a turn only when it knows when it was queued
    assert turn.queued_at is not None and turn.queued_at == turn.claimed_at
    assert _copy(turn).queued_at == turn.queued_at


def test_an_expired_lease_is_taken_over_and_the_old_holder_loses_the_turn(bot):
    first = _turn(bot)
    assert first.claim(lease=LEASE)
    Turn.objects.filter(pk=first.pk).update(heartbeat_at=timezone.now() - 2 * LEASE)

    second = _copy(first)
    assert second.claim(lease=LEASE) is True
    assert second.attempts == 2

    # The first worker was only slow: it can no longer renew, stamp or end the turn.
    assert first.heartbeat() is False
    assert first.first_token() is False
    assert first.finish(answer="旧答案", reasoning="") is False
    assert first.fail(error="late") is False
    assert first.status == Turn.Status.GENERATING and first.answer == ""
    assert second.heartbeat() is True
    assert _copy(first).status == Turn.Status.GENERATING


def test_an_ended_turn_cannot_be_claimed(bot):
    turn = _turn(bot, status=Turn.Status.ANSWERED)
    assert turn.claim(lease=LEASE) is False
    assert _copy(turn).attempts == 0


def test_heartbeat_and_first_token_renew_only_for_the_holder(bot):
    turn = _turn(bot)
    assert turn.heartbeat() is False  # queued: nobody holds a lease yet
    assert turn.claim(lease=LEASE)
    before = turn.heartbeat_at

    assert turn.heartbeat() is True
    assert turn.heartbeat_at > before
    assert _copy(turn).heartbeat_at == turn.heartbeat_at

    assert turn.first_token() is True
    stamped = turn.first_token_at
    assert stamped is not None
    assert turn.first_token() is False  # once only
    assert turn.first_token_at == stamped == _copy(turn).first_token_at


# --- the stream -------------------------------------------------------------------------------


def test_close_stream_wins_once_and_the_loser_sees_the_close(bot):
    turn = _turn(bot)
    other = _copy(turn)

    assert turn.close_stream() is True
    assert turn.stream_closed_at is not None

    assert other.close_stream() is False
    assert other.stream_closed_at == turn.stream_closed_at


def test_close_stream_on_a_query_set_finds_the_turn_by_stream(bot):
    turn = _turn(bot)
    streams = Turn.objects.filter(bot=bot, stream_id=turn.stream_id)
    assert streams.close_stream(now=timezone.now()) is True
    assert streams.close_stream(now=timezone.now()) is False


# --- the one end ------------------------------------------------------------------------------


def test_finish_wins_from_generating_and_refreshes_the_instance(bot):
    turn = _turn(bot)
    assert turn.claim(lease=LEASE)
    turn.sources = [{"chunk": 1}]
    turn.completion_tokens = 7

    assert turn.finish(answer="五天。", reasoning="查制度") is True

    assert turn.status == Turn.Status.ANSWERED and turn.finished_at is not None
    stored = _copy(turn)
    assert (stored.status, stored.answer, stored.reasoning) == ("answered", "五天。", "查制度")
    assert (stored.sources, stored.completion_tokens) == ([{"chunk": 1}], 7)
    assert stored.finished_at == turn.finished_at
    assert turn.finish(answer="again", reasoning="") is False
    assert turn.fail(error="late") is False
    assert _copy(turn).status == Turn.Status.ANSWERED


def test_finish_loses_on_a_turn_nobody_claimed(bot):
    turn = _turn(bot)
    assert turn.finish(answer="五天。", reasoning="") is False
    assert turn.status == Turn.Status.QUEUED and turn.finished_at is None
    assert _copy(turn).answer == ""


def test_fail_wins_once_and_keeps_the_error_short(bot):
    turn = _turn(bot)
    assert turn.fail(error="x" * 5000) is True
    assert turn.status == Turn.Status.FAILED and len(turn.error) == 4000
    assert turn.finished_at == _copy(turn).finished_at
    assert turn.fail(error="again") is False
    assert _copy(turn).error == "x" * 4000


def test_fail_then_finish_the_late_answer_loses(bot, response_server):
    # Given a worker answering, and the sweeper holding its own copy of the same row
    turn = _turn(bot, response_url=response_server.url_for("m-1"))
    assert turn.claim(lease=LEASE)
    sweeper = _copy(turn)

    # When the sweeper fails it, and then the slow worker's answer arrives
    assert deliver.turn_fail(turn=sweeper, error="no worker finished this turn in time") is True
    assert deliver.turn_finish(turn=turn, reasoning="", answer="迟到的答案") is False

    # Then the turn has exactly one end: failed, with one ledger entry, and the late
    # answer went nowhere (neither stored nor posted).
    stored = _copy(turn)
    assert stored.status == Turn.Status.FAILED and stored.answer == ""
    assert _ledger_entries(turn) == 1
    assert "迟到的答案" not in stream_state_get(turn.stream_id).content
    assert response_server.posts("m-1") == []
    assert turn.status == Turn.Status.GENERATING  # the loser's instance is not rewritten


def test_finish_then_fail_the_late_failure_loses(bot, response_server):
    turn = _turn(bot, response_url=response_server.url_for("m-1"))
    assert turn.claim(lease=LEASE)
    sweeper = _copy(turn)

    assert deliver.turn_finish(turn=turn, reasoning="", answer="五天。") is True
    assert deliver.turn_fail(turn=sweeper, error="late sweep") is False

    stored = _copy(turn)
    assert (stored.status, stored.answer, stored.error) == ("answered", "五天。", "")
    assert _ledger_entries(turn) == 1
    assert stream_state_get(turn.stream_id).content == "五天。"
    assert response_server.posts("m-1") == []  # no apology after the answer


def test_create_rejected_is_born_in_its_end_state(bot):
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="u1")
    now = timezone.now()
    turn = Turn.objects.create_rejected(
        reason="rate_limited",
        answer="请稍后再试。",
        now=now,
        bot=bot,
        conversation=conversation,
        msgid="m-r",
        stream_id="s-r",
        question="q",
        received_at=now,
    )
    stored = _copy(turn)
    assert (stored.status, stored.rejection_reason, stored.answer) == (
        Turn.Status.REJECTED,
        "rate_limited",
        "请稍后再试。",
    )
    assert stored.finished_at == stored.stream_closed_at == now
    assert stored.claim(lease=LEASE) is False
    assert stored.fail(error="x") is False


# --- selections ---------------------------------------------------------------------------------


def test_claimable_selects_the_turns_a_worker_may_take(bot):
    now = timezone.now()
    old = now - dt.timedelta(minutes=10)
    queued_new = _turn(bot, msgid="q-new")
    queued_old = _turn(bot, msgid="q-old", received_at=old)
    alive = _turn(bot, msgid="alive", status=Turn.Status.GENERATING, heartbeat_at=now)
    silent = _turn(bot, msgid="silent", status=Turn.Status.GENERATING, heartbeat_at=old)
    _turn(bot, msgid="done", status=Turn.Status.ANSWERED, received_at=old)

    claimable = set(Turn.objects.claimable(now=now, lease=LEASE).values_list("msgid", flat=True))
    assert claimable == {queued_new.msgid, queued_old.msgid, silent.msgid}
    assert alive.msgid not in claimable


# --- admission -----------------------------------------------------------------------------------


def _message(text: str, *, msgid: str = "m-in", userid: str = "u1") -> InboundMessage:
    return InboundMessage(
        msgid=msgid,
        aibotid="",
        chatid=None,
        chattype="single",
        userid=userid,
        response_url=None,
        msgtype="text",
        text=text,
        image_urls=(),
        quote=None,
        raw={},
    )


def test_the_masked_question_is_stored_once_at_admission(bot):
    # Given a bot whose policy masks mobile numbers
    policy = AuditPolicy.objects.create(name="pii", pii_mobile=Action.MASK)
    policy.bots.add(bot)

    # When an employee asks with their number in the question
    turn = receive.mention_receive(
        bot=bot, message=_message("我的手机13812345678能报销吗"), received_at=timezone.now()
    )

    # Then the masked form is stored on the row, and the model's messages use it even when
    # the policy is gone by the time the worker runs (it is not evaluated again).
    assert turn.status == Turn.Status.QUEUED
    stored = _copy(turn)
    assert "13812345678" not in stored.question_masked and "手机" in stored.question_masked
    assert stored.question == "我的手机13812345678能报销吗"
    policy.delete()
    messages = conversation_messages(turn=stored)
    assert messages[-1]["content"] == stored.question_masked


def test_a_question_without_policies_is_stored_once_and_shown_as_asked(bot):
    turn = receive.mention_receive(
        bot=bot, message=_message("年假怎么算？"), received_at=timezone.now()
    )
    stored = _copy(turn)
    assert stored.question_masked == ""
    assert conversation_messages(turn=stored)[-1]["content"] == "年假怎么算？"


def test_a_rejected_question_is_created_rejected_with_its_ledger_entry(make_bot):
    bot = make_bot(allowed_userids=["someone-else"])
    turn = receive.mention_receive(
        bot=bot, message=_message("年假怎么算？"), received_at=timezone.now()
    )
    stored = _copy(turn)
    assert (stored.status, stored.rejection_reason) == (Turn.Status.REJECTED, "not_allowed")
    assert stored.finished_at is not None and stored.stream_closed_at is not None
    assert stored.queued_at is None  # never enqueued
    assert _ledger_entries(turn) == 1
    state = stream_state_get(turn.stream_id)
    assert state.finish is True and state.content == stored.answer


# --- knowledge bases once per turn ------------------------------------------------------------


def test_retrieval_uses_the_knowledge_bases_it_is_given(bot):
    kb = KnowledgeBase.objects.create(name="HR", slug="hr")
    bot.knowledge_bases.add(kb)
    turn = _turn(bot)
    knowledge_bases = list(bot.knowledge_bases.select_related("embedding_profile"))

    with CaptureQueriesContext(connection) as queries:
        generate._knowledge_hits(turn=turn, question=turn.question, knowledge_bases=knowledge_bases)

    table = KnowledgeBase._meta.db_table
    assert not [q["sql"] for q in queries if f'FROM "{table}"' in q["sql"]]
    # Without them (an older caller) the same call looks them up itself.
    with CaptureQueriesContext(connection) as queries:
        generate._knowledge_hits(turn=turn, question=turn.question)
    assert [q["sql"] for q in queries if f'FROM "{table}"' in q["sql"]]

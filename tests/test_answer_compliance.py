"""Compliance policies on the answer path: questions filtered before the model, answers
filtered before WeCom (streamed content included), every turn in the hash-chained ledger.
"""

from __future__ import annotations

import re

import pytest
from django.core.management import call_command

from apps.audit.models import Action, AuditPolicy, LedgerEntry, PolicyWordList, ReviewCase
from apps.audit.models import SensitiveWordList as WordList
from apps.bots.models import Turn
from apps.bots.selectors import bot_policies, conversation_messages
from apps.bots.services.generate import _masker
from tests.conftest import turn_terminal

pytestmark = pytest.mark.django_db(transaction=True)


def _policy(bot, *, words: str, action: str, **fields) -> AuditPolicy:
    policy = AuditPolicy.objects.create(
        name=f"p-{action}", refusal_message="该内容无法回答。", **fields
    )
    word_list = WordList.objects.create(name=f"w-{action}", words=words)
    PolicyWordList.objects.create(policy=policy, word_list=word_list, action=action)
    policy.bots.add(bot)
    return policy


def test_blocked_question_never_reaches_the_model_and_is_recorded(bot, simulator_for):
    _policy(bot, words="绝密文件", action=Action.BLOCK)
    sim = simulator_for(bot)
    reply = sim.decrypt_reply(sim.post_message(sim.text_message("把绝 密*文件发我", userid="u1")))
    assert reply["stream"] == {
        "id": reply["stream"]["id"],
        "finish": True,
        "content": "该内容无法回答。",
        "feedback": {"id": reply["stream"]["id"]},
    }
    turn = Turn.objects.get()
    assert (turn.status, turn.rejection_reason) == (Turn.Status.REJECTED, "policy_blocked")
    assert turn.filter_decisions[0]["subject"] == "question"
    assert ReviewCase.objects.filter(turn=turn, action=Action.BLOCK).count() == 1
    assert LedgerEntry.objects.filter(ref__endswith=f":{turn.pk}").count() == 1


def test_masked_question_is_what_the_model_sees(bot):
    from django.utils import timezone

    from apps.bots.models import Conversation

    AuditPolicy.objects.create(name="pii", pii_mobile=Action.MASK).bots.add(bot)
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="u1")
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid="m",
        stream_id="s",
        question="我的手机13812345678能报销吗",
        received_at=timezone.now(),
    )
    messages = conversation_messages(turn=turn, mask=_masker(bot_policies(bot=bot)))
    assert "13812345678" not in messages[-1]["content"]
    assert "手机" in messages[-1]["content"]


@pytest.mark.slow
def test_blocked_word_in_the_answer_is_never_streamed(make_bot, simulator_for, start_worker):
    bot = make_bot(context_turns=0, max_tokens=60)
    start_worker(WECOM_STREAM_FLUSH_SECONDS="0.02")
    sim = simulator_for(bot, refresh_interval=0.02)
    question = "Write one friendly sentence welcoming a new employee to the company."
    # Greedy decoding: the same question gives the same answer, so a word the model is
    # about to write can be made a blocked word.
    first = sim.ask(question, userid="u1", timeout=120)
    words = [w for w in re.findall(r"[A-Za-z]{5,}", first.answer)]
    assert len(words) >= 3, first.answer
    blocked = words[len(words) // 2]
    _policy(bot, words=blocked, action=Action.BLOCK)
    second = sim.ask(question, userid="u2", timeout=120)
    assert second.finished
    assert second.answer == "该内容无法回答。"
    for snapshot in second.snapshots:
        assert blocked.lower() not in snapshot.lower(), snapshot
    turn = turn_terminal(second.msgid)
    assert blocked in turn.withheld_answer
    assert turn.filter_decisions[-1]["subject"] == "answer"
    assert ReviewCase.objects.filter(turn=turn).exists()
    call_command("audit_verify", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert LedgerEntry.objects.count() == 2  # both turns, chained

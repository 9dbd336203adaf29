"""Grounded answers through a full @-mention: permission-filtered passages, cited sources."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from apps.bots.models import Turn
from apps.directory.models import DirectoryUser, GroupChat
from apps.knowledge.models import KnowledgeBase
from tests.conftest import turn_terminal

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LEAVE_POLICY = """# 员工手册

## 年假

员工入职满一年后，每年享有五天带薪年假。工作满十年后，年假增加到十天。

## 报销

差旅费用须在出差结束后三十天内提交报销申请，并附上发票。
"""

SALARY_BANDS = """# 薪酬制度

## 薪级表

工程师一级月薪两万元，二级月薪三万元。薪级表属于机密信息。
"""


@pytest.fixture
def hr_bot(make_bot, tmp_path):
    (tmp_path / "handbook.md").write_text(LEAVE_POLICY, encoding="utf-8")
    (tmp_path / "salary.md").write_text(SALARY_BANDS, encoding="utf-8")
    out = io.StringIO()
    call_command("kb_ingest", "handbook", str(tmp_path / "handbook.md"), stdout=out)
    call_command("kb_ingest", "salary", str(tmp_path / "salary.md"), department=["HR"], stdout=out)
    DirectoryUser.objects.create(userid="eng1", departments=["Engineering"])
    DirectoryUser.objects.create(userid="hr1", departments=["HR"])
    bot = make_bot(max_tokens=40, retrieval_top_k=3)
    bot.knowledge_bases.set(KnowledgeBase.objects.all())
    return bot


def _files(turn: Turn) -> set[str]:
    return {source["file"] for source in turn.sources}


def test_answer_cites_sources_and_never_sees_restricted_passages(
    hr_bot, simulator_for, start_worker
):
    start_worker()
    sim = simulator_for(hr_bot)
    leave = sim.ask("@HR助手 刚入职一年能休几天年假", userid="eng1", chatid="g1", timeout=180)
    assert leave.finished
    turn = turn_terminal(leave.msgid)
    assert "handbook.md" in _files(turn)
    assert "salary.md" not in _files(turn)
    # The streamed answer ends with the compact sources list (document title + section).
    assert "员工手册" in leave.answer.splitlines()[-1] or any(
        "员工手册" in line for line in leave.answer.splitlines()[-3:]
    )
    assert all(source["document_version"] == 1 for source in turn.sources)

    salary = sim.ask("@HR助手 工程师薪级表月薪多少", userid="eng1", chatid="g1", timeout=180)
    turn = turn_terminal(salary.msgid)
    assert "salary.md" not in _files(turn)  # never in the prompt of someone not allowed
    assert "两万" not in salary.answer

    # A group whose registered members are all in HR may use the salary table.
    GroupChat.objects.create(chat_id="g2", member_userids=["hr1"])
    allowed = sim.ask("@HR助手 工程师薪级表月薪多少", userid="hr1", chatid="g2", timeout=180)
    turn = turn_terminal(allowed.msgid)
    assert turn.status == Turn.Status.ANSWERED, (turn.status, turn.error, turn.answer)
    assert "salary.md" in _files(turn), (turn.sources, turn.answer)

"""Enforced "answer only from sources": no relevant passage, no model, a fixed reply on record.

Most bots here run a model profile whose GGUF file does not exist: a turn that reaches the
model fails loading it, so an answered turn proves the model was never asked. One slow
test uses the real model to show an answerable question is still answered by it.
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import OperatorAuditEntry
from apps.bots.models import Conversation, Turn
from apps.bots.services import generate
from apps.bots.streams import StreamState, stream_state_get, stream_state_set
from apps.directory.models import DirectoryUser
from apps.inference.models import ModelProfile
from apps.knowledge.models import KnowledgeBase
from apps.knowledge.services.retrieval import Hit, hits_relevance

pytestmark = pytest.mark.django_db(transaction=True)

HANDBOOK = """# 员工手册

## 年假

员工入职满一年后，每年享有五天带薪年假。工作满十年后，年假增加到十天。

## 报销

差旅费用须在出差结束后三十天内提交报销申请，并附上发票。
"""

SALARY = """# 薪酬制度

## 薪级表

工程师一级月薪两万元，二级月薪三万元。薪级表属于机密信息。
"""

FIXED = "这个问题请咨询人力资源部。"
OUTSIDE_THE_CORPUS = "火星上的沙尘暴一般持续多久？"


@pytest.fixture
def knowledge(tmp_path):
    (tmp_path / "handbook.md").write_text(HANDBOOK, encoding="utf-8")
    (tmp_path / "salary.md").write_text(SALARY, encoding="utf-8")
    out = io.StringIO()
    call_command("kb_ingest", "handbook", str(tmp_path / "handbook.md"), stdout=out)
    call_command("kb_ingest", "salary", str(tmp_path / "salary.md"), department=["HR"], stdout=out)
    DirectoryUser.objects.create(userid="eng1", departments=["Engineering"])
    DirectoryUser.objects.create(userid="hr1", departments=["HR"])
    return {kb.slug: kb for kb in KnowledgeBase.objects.all()}


@pytest.fixture
def modelless_bot(make_bot, tmp_path):
    """A bot whose model cannot load: reaching the model fails the turn."""
    profile = ModelProfile.objects.create(
        name="missing model", gguf_path=str(tmp_path / "missing.gguf"), context_size=2048
    )
    return make_bot(model_profile=profile, no_answer_reply=FIXED)


def _ask(bot, question: str, *, userid: str = "eng1", msgid: str = "m-1") -> Turn:
    conversation, _ = Conversation.objects.get_or_create(
        bot=bot, chat_type=Conversation.ChatType.SINGLE, chat_id="", userid=userid
    )
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=msgid,
        stream_id=f"s-{msgid}",
        question=question,
        received_at=timezone.now(),
    )
    stream_state_set(turn.stream_id, StreamState(deadline=timezone.now().timestamp() + 300))
    generate.turn_generate(turn_id=turn.pk)
    return Turn.objects.get(pk=turn.pk)


def _assert_fixed_reply(turn: Turn) -> None:
    assert (turn.status, turn.answer, turn.error) == (Turn.Status.ANSWERED, FIXED, ""), turn.error
    assert turn.fixed_reply_reason == Turn.FixedReplyReason.NO_RELEVANT_SOURCE
    assert (turn.sources, turn.prompt_tokens, turn.first_token_at) == ([], 0, None)
    state = stream_state_get(turn.stream_id)
    assert state.finish is True and FIXED in state.content


def _assert_model_asked(turn: Turn) -> None:
    # The missing GGUF file is only opened when the engine is loaded for an answer.
    assert turn.status == Turn.Status.FAILED, (turn.status, turn.answer)
    assert "missing.gguf" in turn.error
    assert turn.fixed_reply_reason == ""


def test_a_question_outside_the_corpus_gets_the_fixed_reply_without_the_model(
    knowledge, modelless_bot
):
    modelless_bot.knowledge_bases.set(knowledge.values())

    _assert_fixed_reply(_ask(modelless_bot, OUTSIDE_THE_CORPUS))


def test_a_user_outside_every_audience_gets_the_fixed_reply(knowledge, modelless_bot):
    modelless_bot.knowledge_bases.set([knowledge["salary"]])

    # The passage answers the question, but eng1 may not read it.
    _assert_fixed_reply(_ask(modelless_bot, "工程师薪级表月薪多少", userid="eng1"))
    # hr1 may: the same question goes to the model.
    _assert_model_asked(_ask(modelless_bot, "工程师薪级表月薪多少", userid="hr1", msgid="m-2"))


def test_an_answerable_question_reaches_the_model(knowledge, modelless_bot):
    modelless_bot.knowledge_bases.set(knowledge.values())

    _assert_model_asked(_ask(modelless_bot, "刚入职一年能休几天年假"))


def test_the_default_reply_is_used_when_the_bot_has_none(knowledge, modelless_bot):
    modelless_bot.no_answer_reply = ""
    modelless_bot.save()
    modelless_bot.knowledge_bases.set(knowledge.values())

    turn = _ask(modelless_bot, OUTSIDE_THE_CORPUS)

    assert turn.status == Turn.Status.ANSWERED
    assert turn.fixed_reply_reason == Turn.FixedReplyReason.NO_RELEVANT_SOURCE
    assert turn.answer and turn.answer != FIXED


@pytest.mark.parametrize(
    ("bot_only", "handbook_only", "salary_only", "model_asked"),
    [
        (True, None, None, False),  # every knowledge base follows the bot
        (False, None, None, True),  # the bot lets the model answer freely
        (False, True, True, False),  # every knowledge base's own setting wins
        (True, None, False, True),  # one knowledge base that does not insist is enough
    ],
)
def test_only_when_every_knowledge_base_answers_only_from_sources(
    knowledge, modelless_bot, bot_only, handbook_only, salary_only, model_asked
):
    modelless_bot.answer_only_from_sources = bot_only
    modelless_bot.save()
    KnowledgeBase.objects.filter(slug="handbook").update(answer_only_from_sources=handbook_only)
    KnowledgeBase.objects.filter(slug="salary").update(answer_only_from_sources=salary_only)
    modelless_bot.knowledge_bases.set(KnowledgeBase.objects.all())

    turn = _ask(modelless_bot, OUTSIDE_THE_CORPUS)

    if model_asked:
        _assert_model_asked(turn)
    else:
        _assert_fixed_reply(turn)


def test_a_bot_without_knowledge_bases_always_asks_the_model(modelless_bot):
    _assert_model_asked(_ask(modelless_bot, OUTSIDE_THE_CORPUS))


def test_relevance_adds_the_share_of_question_words_in_the_passage():
    def hit(text: str, similarity: float | None) -> Hit:
        return Hit(
            chunk_id=1, document_id=1, document="a.md", title="A", knowledge_base="kb",
            heading_path=("年假",), text=text, document_version=1, page=None, score=1.0,
            similarity=similarity,
        )  # fmt: skip

    question = "年假有几天"
    assert hits_relevance(query=question, hits=[], lexical_weight=0.3) == 0.0
    unrelated = hits_relevance(query=question, hits=[hit("差旅报销", 0.2)], lexical_weight=0.3)
    related = hits_relevance(
        query=question, hits=[hit("休几天年假由工龄决定", 0.2)], lexical_weight=0.3
    )
    assert unrelated == pytest.approx(0.2 + 0.3 * (1 / 2))  # the heading holds 年假
    assert related == pytest.approx(0.2 + 0.3)
    # Found by the words only (no similarity): the words alone count.
    assert hits_relevance(query=question, hits=[hit("年假五天", None)], lexical_weight=0.3) > 0
    # The best passage decides.
    assert hits_relevance(
        query=question, hits=[hit("差旅报销", 0.2), hit("年假五天", 0.6)], lexical_weight=0.0
    ) == pytest.approx(0.6)


@pytest.mark.slow
def test_an_answerable_question_is_answered_by_the_real_model(knowledge, make_bot):
    bot = make_bot(max_tokens=24, retrieval_top_k=3)
    bot.knowledge_bases.set(knowledge.values())

    turn = _ask(bot, "刚入职一年能休几天年假")

    assert turn.status == Turn.Status.ANSWERED, (turn.status, turn.error)
    assert turn.fixed_reply_reason == ""
    assert turn.completion_tokens > 0
    assert "handbook.md" in {source["file"] for source in turn.sources}


def test_the_admin_sets_the_reply_and_filters_turns_by_why(admin_client, knowledge, modelless_bot):
    modelless_bot.knowledge_bases.set(knowledge.values())
    _ask(modelless_bot, OUTSIDE_THE_CORPUS)
    _ask(modelless_bot, "刚入职一年能休几天年假", msgid="m-2")

    turns = admin_client.get(
        reverse("admin:bots_turn_changelist"), {"fixed_reply_reason": "no_relevant_source"}
    )
    assert turns.status_code == 200
    assert [turn.msgid for turn in turns.context["cl"].result_list] == ["m-1"]

    page = admin_client.get(reverse("admin:bots_bot_change", args=[modelless_bot.pk]))
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data.update(
        no_answer_reply="请联系人力资源部。",
        knowledge_bases=[kb.pk for kb in knowledge.values()],
        answer_only_from_sources="on",
        enabled="on",
        new_token="",
        new_encoding_aes_key="",
    )
    for name in ("allowed_userids", "allowed_departments"):
        data[name] = ""
    response = admin_client.post(reverse("admin:bots_bot_change", args=[modelless_bot.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    modelless_bot.refresh_from_db()
    assert modelless_bot.no_answer_reply == "请联系人力资源部。"
    entry = OperatorAuditEntry.objects.filter(action__startswith="bots.bot").latest("pk")
    assert "请联系人力资源部。" in json.dumps(entry.after, ensure_ascii=False)


def test_without_vectors_the_model_decides_under_the_prompt_rule(knowledge, modelless_bot):
    """Passages found by their words alone (the embedding model failed): nothing to measure."""
    modelless_bot.knowledge_bases.set(knowledge.values())
    turn = Turn(bot=modelless_bot, question=OUTSIDE_THE_CORPUS)
    words_only = Hit(
        chunk_id=1, document_id=1, document="a.md", title="A", knowledge_base="kb",
        heading_path=(), text="火星", document_version=1, page=None, score=1.0,
    )  # fmt: skip
    knowledge_bases = list(knowledge.values())

    assert not generate._sources_do_not_answer(
        turn=turn, question=OUTSIDE_THE_CORPUS, hits=[words_only], knowledge_bases=knowledge_bases
    )
    assert generate._sources_do_not_answer(
        turn=turn, question=OUTSIDE_THE_CORPUS, hits=[], knowledge_bases=knowledge_bases
    )

"""Retrieval quality pieces measured in bench/retrieval.py: neighbouring passages that
continue a hit go to the model with it, and lists stay with the line that introduces them.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from apps.bots.models import Conversation, Turn
from apps.bots.services import generate
from apps.directory.selectors import Readers
from apps.knowledge import selectors
from apps.knowledge.chunking import chunk_sections, estimate_tokens, text_within
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.parsing import Section
from apps.knowledge.segment import query_terms, segment_for_search
from apps.knowledge.services.embedding import embedder_spec_for, get_embedder
from apps.knowledge.services.ingest import embedded_text
from apps.knowledge.services.retrieval import (
    _dense_query,
    _neighbours_attach,
    knowledge_retrieve,
    prompt_with_passages,
)

POLICY = """# 报销制度

## 交通

出差优先乘坐高铁二等座。

## 住宿

一线城市住宿标准为每晚600元。

## 餐补

每天伙食补助100元，无需发票。
"""


@pytest.fixture(autouse=True)
def _media(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


def _document(texts: list[str], *, heading=("报销制度", "住宿")) -> KnowledgeBase:
    kb = KnowledgeBase.objects.create(name="Expenses", slug="expenses")
    document = Document.objects.create(
        kb=kb, file="expenses.md", original_filename="expenses.md", title="报销制度",
        generation=1, active_generation=1, active_version=1, status=Document.Status.READY,
    )  # fmt: skip
    Chunk.objects.bulk_create(
        [_chunk(document, position, text, heading) for position, text in enumerate(texts)]
    )
    return kb


def _chunk(document: Document, position: int, text: str, heading: tuple[str, ...]) -> Chunk:
    return Chunk(
        document=document, document_version=1, generation=1, position=position,
        heading_path=list(heading), text=text, search_text=segment_for_search(text),
        token_count=estimate_tokens(text), embedding=[1.0, 0.0, 0.0],
        embedding_dimensions=3, embedding_model="none",
    )  # fmt: skip


def _hits(kb: KnowledgeBase, position: int, **kwargs):
    """The chunk at `position` as a hit (through the search's own fusion), with neighbours."""
    from apps.knowledge.services.retrieval import _HIT_FIELDS, _fuse

    searchable = selectors.chunks_searchable(kb_ids=[kb.pk], readers=Readers.everything())
    row = searchable.filter(position=position).values(*_HIT_FIELDS).get()
    hits = _fuse([{**row, "closeness": 0.1, "method": "dense0"}], top_k=5)
    return _neighbours_attach(searchable, hits, **kwargs)


@pytest.mark.django_db
def test_a_hit_brings_the_passages_around_it_into_the_prompt() -> None:
    kb = _document(["第一段。", "第二段。", "第三段。"])

    [hit] = _hits(kb, 1, token_budget=200, same_heading=True)

    assert (hit.before, hit.text, hit.after) == ("第一段。", "第二段。", "第三段。")
    prompt = prompt_with_passages(question="住宿标准？", hits=[hit])
    assert "[1] 报销制度 > 报销制度 > 住宿\n第一段。\n第二段。\n第三段。" in prompt


@pytest.mark.django_db
def test_the_budget_prefers_what_follows_and_cuts_at_sentences() -> None:
    kb = _document(["前面一句。", "命中的段落。", "后面第一句。后面第二句很长很长很长。"])

    [hit] = _hits(kb, 1, token_budget=8, same_heading=True)

    assert hit.after == "后面第一句。"  # 6 tokens: the second sentence does not fit
    assert hit.before == ""  # the budget is spent
    [none] = _hits(kb, 1, token_budget=0, same_heading=True)
    assert (none.before, none.after) == ("", "")


@pytest.mark.django_db
def test_the_text_two_overlapping_chunks_share_is_shown_once() -> None:
    kb = _document(["甲规定。乙规定。", "乙规定。丙规定。"])

    [hit] = _hits(kb, 0, token_budget=200, same_heading=True)

    assert hit.after == "丙规定。"


@pytest.mark.django_db
def test_disabled_passages_and_other_hits_are_not_attached() -> None:
    kb = _document(["第一段。", "第二段。", "第三段。"])
    Chunk.objects.filter(position=2).update(enabled=False)

    [hit] = _hits(kb, 1, token_budget=200, same_heading=True)

    assert (hit.before, hit.after) == ("第一段。", "")


@pytest.mark.django_db
def test_neighbours_under_another_heading_come_with_it_unless_same_heading_is_asked(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "policy.md").write_text(POLICY, encoding="utf-8")
    call_command("kb_ingest", "hr", str(docs), stdout=io.StringIO(), stderr=io.StringIO())
    kb = KnowledgeBase.objects.get(slug="hr")

    with override_settings(KNOWLEDGE_NEIGHBOUR_TOKENS=200, KNOWLEDGE_NEIGHBOUR_SAME_HEADING=False):
        hits = knowledge_retrieve(
            bot_kb_ids=[kb.pk], readers=Readers.everything(), query="住宿每晚多少钱", top_k=1
        )
    assert hits[0].text == "一线城市住宿标准为每晚600元。"
    assert hits[0].before == "交通\n出差优先乘坐高铁二等座。"
    assert hits[0].after == "餐补\n每天伙食补助100元，无需发票。"
    assert "餐补\n每天伙食补助100元" in prompt_with_passages(question="住宿", hits=hits)

    with override_settings(KNOWLEDGE_NEIGHBOUR_SAME_HEADING=True):
        hits = knowledge_retrieve(
            bot_kb_ids=[kb.pk], readers=Readers.everything(), query="住宿每晚多少钱", top_k=1
        )
    assert (hits[0].before, hits[0].after) == ("", "")


def test_text_within_keeps_whole_sentences_from_either_end() -> None:
    text = "一二三。四五六。七八九。"
    assert text_within(text, tokens=8) == "一二三。四五六。"
    assert text_within(text, tokens=8, from_end=True) == "四五六。七八九。"
    assert text_within(text, tokens=3) == ""


# --- lists and the line that introduces them -------------------------------------------

INTRO = "以下费用可以报销："
ITEMS = ["1. 往返高铁二等座车票。", "2. 市内出租车费。", "3. 每天100元伙食补助。"]


def _texts(text: str, *, chunk_size: int, overlap: int = 0) -> list[str]:
    chunks = chunk_sections([Section(("差旅",), text)], chunk_size=chunk_size, overlap=overlap)
    return [chunk.text for chunk in chunks]


def test_the_line_that_introduces_a_list_moves_to_the_chunk_with_its_items() -> None:
    # The opening sentence and the intro fit one chunk, the first item would not.
    text = "出差须提前在OA系统提交申请并由部门负责人审批。\n" + INTRO + "\n" + "\n".join(ITEMS)

    texts = _texts(text, chunk_size=40)

    assert texts[0] == "出差须提前在OA系统提交申请并由部门负责人审批。"
    assert texts[1].startswith(INTRO + "\n1. 往返高铁二等座车票。")
    assert all(not chunk.rstrip().endswith("：") for chunk in texts)


def test_a_list_longer_than_a_chunk_repeats_its_introducing_line() -> None:
    text = INTRO + "\n" + "\n".join(ITEMS)

    texts = _texts(text, chunk_size=30, overlap=0)

    assert len(texts) > 1
    assert all(chunk.startswith(INTRO) for chunk in texts)
    assert "\n".join(texts).count("3. 每天100元伙食补助。") == 1


def test_short_list_items_share_one_chunk_with_their_intro() -> None:
    text = "总则。\n\n" + INTRO + "\n\n" + "\n\n".join(ITEMS)

    assert _texts(text, chunk_size=400) == ["\n\n".join(["总则。", INTRO, *ITEMS])]


def test_a_numbered_item_is_not_split_after_its_number() -> None:
    texts = _texts("\n".join(ITEMS), chunk_size=14)

    assert texts == ITEMS


def test_paragraphs_without_lists_are_packed_as_before() -> None:
    # A colon that introduces no list changes nothing.
    text = "注意：发票须为原件。\n超过60天不予受理。"

    assert _texts(text, chunk_size=12) == ["注意：发票须为原件。", "超过60天不予受理。"]


# --- the document title in the embedded text -------------------------------------------


def test_the_title_leads_the_embedded_text_unless_the_headings_start_with_it(settings) -> None:
    settings.KNOWLEDGE_EMBED_HEADINGS = True
    assert (
        embedded_text(("住宿",), "每晚600元。", title="报销制度") == "报销制度 > 住宿\n每晚600元。"
    )
    assert embedded_text((), "每晚600元。", title="报销制度") == "报销制度\n每晚600元。"
    assert embedded_text(("报销制度", "住宿"), "每晚600元。", title="报销制度") == (
        "报销制度 > 住宿\n每晚600元。"
    )
    settings.KNOWLEDGE_EMBED_HEADINGS = False
    assert embedded_text(("住宿",), "每晚600元。", title="报销制度") == "每晚600元。"


@pytest.mark.django_db
def test_a_document_without_headings_is_embedded_with_its_title(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "hotel-rates.txt").write_text("一线城市每晚不超过600元。", encoding="utf-8")
    call_command("kb_ingest", "hr", str(docs), stdout=io.StringIO(), stderr=io.StringIO())
    chunk = Chunk.objects.select_related("document__kb").get()
    embedder = get_embedder(embedder_spec_for(chunk.document.kb))

    [with_title, bare] = embedder.embed([f"{chunk.document.title}\n{chunk.text}", chunk.text])

    assert chunk.heading_path == [] and chunk.document.title
    assert list(chunk.embedding) == pytest.approx(with_title, abs=1e-5)
    assert list(chunk.embedding) != pytest.approx(bare, abs=1e-3)


# --- what the vector search embeds of the question -----------------------------------------


def test_the_vector_search_embeds_the_questions_search_words(settings) -> None:
    settings.KNOWLEDGE_DENSE_QUERY_TERMS = True
    assert _dense_query("Where can I see my payslip?") == " ".join(
        query_terms("Where can I see my payslip?")
    )
    assert "can" not in _dense_query("Where can I see my payslip?").split()
    assert "payslip" in _dense_query("Where can I see my payslip?").split()
    assert "吗" not in _dense_query("年假可以顺延吗")
    settings.KNOWLEDGE_DENSE_QUERY_TERMS = False
    assert _dense_query("Where can I see my payslip?") == "Where can I see my payslip?"


@pytest.mark.django_db
def test_the_answer_path_gives_the_model_the_neighbours(make_bot, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "policy.md").write_text(POLICY, encoding="utf-8")
    call_command("kb_ingest", "hr", str(docs), stdout=io.StringIO(), stderr=io.StringIO())
    bot = make_bot(retrieval_top_k=1)
    bot.knowledge_bases.set(KnowledgeBase.objects.all())
    conversation = Conversation.objects.create(
        bot=bot, chat_type=Conversation.ChatType.SINGLE, userid="eng1"
    )
    turn = Turn.objects.create(
        bot=bot, conversation=conversation, msgid="m-1", stream_id="s-1",
        question="住宿每晚多少钱", received_at=timezone.now(),
    )  # fmt: skip
    knowledge_bases = list(bot.knowledge_bases.all())

    hits = generate._knowledge_hits(turn=turn, question=turn.question) or []
    prompt = generate._grounded(
        turn, ({"role": "user", "content": turn.question},), hits, knowledge_bases=knowledge_bases
    )

    assert [hit.text for hit in hits] == ["一线城市住宿标准为每晚600元。"]
    assert "一线城市住宿标准为每晚600元。\n餐补\n每天伙食补助100元，无需发票。" in prompt
    assert "出差优先乘坐高铁二等座。" in prompt

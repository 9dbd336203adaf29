"""The vector search's language balance: in a bilingual knowledge base, an answer written in
the other language than the question's is not buried under the question's language."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command

from apps.knowledge.models import KnowledgeBase
from apps.knowledge.selectors import Readers
from apps.knowledge.services.retrieval import knowledge_retrieve, language_balanced

DOCS = Path(__file__).resolve().parent.parent / "bench" / "data" / "retrieval" / "docs"


def _row(chunk_id: int, text: str, similarity: float, method: str = "dense0") -> dict:
    return {"id": chunk_id, "text": text, "closeness": 1.0 - similarity, "method": method}


def test_each_language_is_ranked_against_its_own_level_and_the_cosine_is_kept() -> None:
    # A Chinese question: every Chinese passage sits above the one English passage that
    # stands far out from the other English ones.
    rows = [
        _row(1, "年假须通过OA系统提前申请", 0.40),
        _row(2, "会议室通过企业微信日程预订", 0.39),
        _row(3, "加班至晚上10点以后可报销打车费用", 0.38),
        _row(4, "Cards are matched with receipts by the 5th of the month.", 0.33),
        _row(5, "Bicycle racks are on the ground floor.", 0.10),
        _row(6, "Laptops are replaced every 3 years.", 0.09),
        _row(7, "年假", 0.20, method="lexical"),
    ]

    balanced = language_balanced(rows, keep=3, weight=0.75, top=10)

    dense = [row for row in balanced if row["method"] == "dense0"]
    assert [row["id"] for row in dense] == [4, 1, 2]  # cut to `keep`, English first
    assert dense[0]["cosine"] == pytest.approx(0.33)
    assert [row for row in balanced if row["method"] == "lexical"] == [rows[-1]]
    # Off, or with one language only, the order is the similarity's.
    off = language_balanced(rows, keep=3, weight=0.0, top=10)
    assert [row["id"] for row in off if row["method"] == "dense0"] == [1, 2, 3]
    chinese = language_balanced(rows[:3], keep=3, weight=0.75, top=10)
    assert [row["id"] for row in chinese] == [1, 2, 3]


@pytest.mark.django_db
def test_a_chinese_question_finds_its_answer_in_an_english_policy(settings, tmp_path) -> None:
    # The labelled set's documents (18 Chinese, 14 English) and one of its tune-half
    # questions: without the balance, Chinese passages about cards and months fill the top 5.
    settings.MEDIA_ROOT = str(tmp_path / "media")
    folder = tmp_path / "policies"
    shutil.copytree(DOCS, folder)
    call_command("kb_ingest", "policies", str(folder), stdout=io.StringIO(), stderr=io.StringIO())
    kb = KnowledgeBase.objects.get(slug="policies")
    question = "公司卡的消费每月几号前要对账"
    answer = "by the 5th of the following month"

    def top5() -> list:
        return knowledge_retrieve(
            bot_kb_ids=[kb.pk], readers=Readers.everything(), query=question, top_k=5
        )

    settings.KNOWLEDGE_LANGUAGE_BALANCE = 0.0
    # (the passage before it gets in, and shows it as its neighbour: the hit itself does not)
    assert not any(answer in hit.text for hit in top5())
    settings.KNOWLEDGE_LANGUAGE_BALANCE = 0.75
    hits = top5()
    found = [hit for hit in hits if answer in hit.text]
    assert found and found[0].document == "expense-cards-en.md"
    # The similarity shown (and read by the relevance threshold) is the true cosine.
    assert all(hit.similarity is None or 0 < hit.similarity < 1 for hit in hits)

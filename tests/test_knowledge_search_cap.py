"""The lexical search ranks a capped set of matching passages, those with every word first.

At 100k passages a common word matches most rows and ranking them all dominated a search
(bench/retrieval.py); below the cap every match is ranked, as before.
"""

from __future__ import annotations

import pytest
from django.test import override_settings

from apps.directory.selectors import Readers
from apps.knowledge import selectors
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.segment import segment_for_search
from apps.knowledge.services.retrieval import _lexical_lists

pytestmark = pytest.mark.django_db

COMMON = "差旅报销需要部门负责人签字。"
BOTH = "差旅报销须附上发票原件。"


@pytest.fixture
def corpus() -> KnowledgeBase:
    kb = KnowledgeBase.objects.create(name="Expenses", slug="expenses")
    document = Document.objects.create(
        kb=kb, file="expenses.md", original_filename="expenses.md", title="Expenses",
        generation=1, active_generation=1, active_version=1, status=Document.Status.READY,
    )  # fmt: skip
    texts = [COMMON] * 30 + [BOTH] + [COMMON] * 30
    Chunk.objects.bulk_create(
        [_chunk(document, position, text) for position, text in enumerate(texts)]
    )
    return kb


def _chunk(document: Document, position: int, text: str) -> Chunk:
    return Chunk(
        document=document, document_version=1, generation=1, position=position, text=text,
        search_text=segment_for_search(text), token_count=len(text), embedding=[1.0, 0.0, 0.0],
        embedding_dimensions=3, embedding_model="none",
    )  # fmt: skip


def _lexical(kb: KnowledgeBase, query: str, candidates: int = 5) -> list[str]:
    searchable = selectors.chunks_searchable(kb_ids=[kb.pk], readers=Readers.everything())
    [ranked] = _lexical_lists(searchable, query=query, candidates=candidates)
    return [row["text"] for row in ranked]


def test_the_passage_with_every_word_is_ranked_first_even_past_the_cap(corpus):
    with override_settings(KNOWLEDGE_LEXICAL_RANK_LIMIT=3):
        texts = _lexical(corpus, "报销发票")

    # Past the cap, rows with any word are an arbitrary few: the one with both words is
    # in the middle of the table, so it is ranked only because rows with every word come first.
    assert texts[0] == BOTH
    assert texts[1:] == [COMMON] * (len(texts) - 1)


def test_the_cap_bounds_the_rows_ranked(corpus):
    with override_settings(KNOWLEDGE_LEXICAL_RANK_LIMIT=3):
        assert len(_lexical(corpus, "报销发票", candidates=50)) <= 4  # with both + 3 with any
        assert len(_lexical(corpus, "报销", candidates=50)) == 3


def test_below_the_cap_every_match_is_ranked(corpus):
    with override_settings(KNOWLEDGE_LEXICAL_RANK_LIMIT=1000):
        assert len(_lexical(corpus, "报销", candidates=100)) == 61

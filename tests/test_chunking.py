"""Chunking of parsed sections, and Chinese segmentation for PostgreSQL full-text search."""

from __future__ import annotations

import itertools
import re

import pytest

from apps.knowledge.chunking import Chunk, chunk_sections, estimate_tokens
from apps.knowledge.parsing import Section
from apps.knowledge.segment import query_terms, segment_for_search

LEAVE_RULES = (
    "员工入职满一年可享受五天年假。"
    "年假需提前三天在企业微信中申请！"
    "未休年假可以顺延吗？"
    "年假最多顺延至次年三月；"
    "逾期作废。"
)


def sentences_of(text: str) -> list[str]:
    return re.findall(r"[^。！？；]+[。！？；]", text)


# --- Token estimate --------------------------------------------------------------------


def test_estimate_counts_cjk_characters_latin_words_and_symbols() -> None:
    assert estimate_tokens("年假") == 2
    assert estimate_tokens("hello world") == 3  # 2 words x 1.3, rounded up
    assert estimate_tokens("年假 leave。") == 2 + 2 + 1
    assert estimate_tokens("") == 0


# --- Sentence splitting ----------------------------------------------------------------


def test_cjk_text_splits_at_sentence_ends_and_keeps_the_heading_path() -> None:
    # Given one section of five CJK sentences, 15 + 16 + 8 + 11 + 5 tokens
    section = Section(("员工手册", "假期", "年假"), LEAVE_RULES, page=3)

    # When chunked with room for about two sentences and no overlap
    chunks = chunk_sections([section], chunk_size=32, overlap=0)

    # Then every chunk is whole sentences, ending at 。！？；, under the section's path
    assert [chunk.text for chunk in chunks] == [
        "员工入职满一年可享受五天年假。年假需提前三天在企业微信中申请！",
        "未休年假可以顺延吗？年假最多顺延至次年三月；逾期作废。",
    ]
    assert all(chunk.heading_path == ("员工手册", "假期", "年假") for chunk in chunks)
    assert all(chunk.page == 3 for chunk in chunks)
    assert all(chunk.token_count <= 32 for chunk in chunks)


def test_latin_sentences_split_at_sentence_ends_but_not_inside_numbers() -> None:
    text = "Version 3.14 is out. It fixes login! Does it need a restart? No."

    chunks = chunk_sections([Section((), text)], chunk_size=10, overlap=0)

    assert [chunk.text for chunk in chunks] == [
        "Version 3.14 is out.",
        "It fixes login!",
        "Does it need a restart? No.",
    ]


def test_whole_paragraphs_are_kept_together_when_they_fit() -> None:
    # Given two paragraphs that each fit but not together
    first = "第一段第一句。第一段第二句。"
    second = "第二段第一句。第二段第二句。"

    chunks = chunk_sections([Section((), f"{first}\n\n{second}")], chunk_size=20, overlap=0)

    # Then the break falls between the paragraphs, not inside one
    assert [chunk.text for chunk in chunks] == [first, second]


def test_small_paragraphs_share_a_chunk() -> None:
    chunks = chunk_sections([Section((), "甲。\n\n乙。\n\n丙。")], chunk_size=50, overlap=5)

    assert [chunk.text for chunk in chunks] == ["甲。\n\n乙。\n\n丙。"]


# --- Overlap ---------------------------------------------------------------------------


def test_consecutive_chunks_overlap_by_whole_sentences() -> None:
    # Given the five sentences and an overlap worth one short sentence
    section = Section(("年假",), LEAVE_RULES)

    # When chunked
    chunks = chunk_sections([section], chunk_size=32, overlap=16)

    # Then each chunk after the first starts with the previous chunk's last sentence(s)
    assert len(chunks) >= 2
    for previous, current in itertools.pairwise(chunks):
        tail = sentences_of(previous.text)[-1]
        assert current.text.startswith(tail)
        assert estimate_tokens(tail) <= 16
    # and together they still cover every sentence in order
    assert sentences_of(chunks[-1].text)[-1] == "逾期作废。"
    covered = [s for chunk in chunks for s in sentences_of(chunk.text)]
    assert list(dict.fromkeys(covered)) == sentences_of(LEAVE_RULES)


def test_overlap_falls_back_to_a_tail_when_the_last_sentence_is_too_long() -> None:
    # Given sentences far longer than the overlap
    long_a = "甲" * 20 + "。"
    long_b = "乙" * 20 + "。"

    chunks = chunk_sections([Section((), long_a + long_b)], chunk_size=30, overlap=5)

    # Then the second chunk still opens with the first's last 5 tokens (4 characters and 。)
    assert [chunk.text for chunk in chunks] == [long_a, "甲甲甲甲。" + long_b]


# --- Limits ----------------------------------------------------------------------------


def test_no_chunk_exceeds_chunk_size_and_long_sentences_are_hard_split() -> None:
    # Given a sentence of 100 CJK characters without punctuation, then a short one
    run_on = "规" * 100
    text = f"{run_on}。短句。"

    # When chunked at 30 tokens
    chunks = chunk_sections([Section((), text)], chunk_size=30, overlap=0)

    # Then the long sentence is cut into pieces that fit and together rebuild it
    assert all(chunk.token_count <= 30 for chunk in chunks)
    assert "".join(chunk.text for chunk in chunks) == text
    assert len(chunks) == 4


def test_hard_split_of_latin_text_cuts_between_words() -> None:
    text = " ".join(f"word{i}" for i in range(40))  # one 40-word sentence, 52 tokens

    chunks = chunk_sections([Section((), text)], chunk_size=13, overlap=0)

    assert all(chunk.token_count <= 13 for chunk in chunks)
    assert " ".join(chunk.text for chunk in chunks) == text


def test_a_single_word_longer_than_the_chunk_is_cut_by_characters() -> None:
    chunks = chunk_sections([Section((), "x" * 50)], chunk_size=1, overlap=0, count_tokens=len)

    assert [chunk.text for chunk in chunks] == ["x"] * 50


# --- Sections and positions ------------------------------------------------------------


def test_sections_are_never_merged_and_positions_run_over_the_document() -> None:
    # Given three short sections that would all fit in one chunk
    sections = [
        Section(("假期", "年假"), "年假五天。", page=1),
        Section(("假期", "病假"), "病假需证明。", page=1),
        Section(("报销",), "十日内报销。", page=2),
    ]

    chunks = chunk_sections(sections, chunk_size=500, overlap=50)

    # Then each section is its own chunk, numbered 0, 1, 2
    assert chunks == [
        Chunk("年假五天。", ("假期", "年假"), 0, 5, 1),
        Chunk("病假需证明。", ("假期", "病假"), 1, 6, 1),
        Chunk("十日内报销。", ("报销",), 2, 6, 2),
    ]


def test_overlap_never_reaches_into_the_previous_section() -> None:
    sections = [Section(("一",), LEAVE_RULES), Section(("二",), "第二节内容。")]

    chunks = chunk_sections(sections, chunk_size=32, overlap=16)

    assert chunks[-1].text == "第二节内容。"
    assert [chunk.position for chunk in chunks] == list(range(len(chunks)))


def test_empty_sections_produce_no_chunks() -> None:
    assert chunk_sections([Section((), "  \n\n ")], chunk_size=10, overlap=0) == []


def test_caller_supplied_tokenizer_decides_sizes() -> None:
    # Given a tokenizer that counts characters
    section = Section((), "abc. def. ghi.")

    chunks = chunk_sections([section], chunk_size=9, overlap=0, count_tokens=len)

    assert [(chunk.text, chunk.token_count) for chunk in chunks] == [
        ("abc. def.", 9),
        ("ghi.", 4),
    ]


@pytest.mark.parametrize(("chunk_size", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_invalid_sizes_are_refused(chunk_size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_sections([Section((), "text")], chunk_size=chunk_size, overlap=overlap)


# --- Segmentation ----------------------------------------------------------------------


def test_segmentation_finds_workplace_words() -> None:
    words = segment_for_search("员工入职满一年可享受五天年假").split()

    assert "年假" in words
    assert "入职" in words
    assert "员工" in words


def test_segmentation_uses_search_mode_sub_words() -> None:
    words = segment_for_search("中华人民共和国").split()

    assert {"中华", "人民", "共和国", "中华人民共和国"} <= set(words)


def test_segmentation_lowercases_latin_and_drops_punctuation() -> None:
    text = "请使用ＷeCom登录，邮箱：HR@Corp.com！"

    assert segment_for_search(text) == "请 使用 wecom 登录 邮箱 hr corp com"


def test_query_terms_are_distinct_and_skip_function_words() -> None:
    assert query_terms("年假怎么请？年假有几天") == ["年假", "几天"]


def test_query_terms_keep_function_words_when_nothing_else_is_left() -> None:
    assert query_terms("怎么") == ["怎么"]

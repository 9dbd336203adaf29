"""Chinese word segmentation for PostgreSQL full-text search with the ``simple`` config.

PostgreSQL cannot split Chinese into words, so chunk text and queries are both segmented
here with jieba's search mode and stored or queried as space-separated words.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from collections.abc import Iterable, Iterator

import jieba

# Workplace words jieba's general dictionary lacks or splits (年假 comes out as 年 / 假).
# Adding words changes how indexed text segments, so re-segment stored chunks after edits.
_WORKPLACE_TERMS = (
    "年假", "入职", "离职", "转正", "试用期", "陪产假", "育儿假", "哺乳假", "五险一金",
    "企业微信", "补卡", "调休", "考勤", "报销", "工资条", "公积金", "年终奖", "销假",
)  # fmt: skip
_STOPWORDS = frozenset(
    {
        "的", "了", "吗", "呢", "吧", "啊", "是", "在", "和", "与", "及", "或", "把", "被",
        "对", "就", "也", "都", "要", "请", "请问", "怎么", "怎样", "如何", "什么", "哪些",
        "哪个", "多少", "我", "我们", "你", "你们", "他", "她", "它", "这", "那", "这个",
        "那个", "有", "没有", "可以", "能", "会",
        "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "for", "from", "how",
        "i", "in", "is", "it", "of", "on", "or", "the", "to", "what", "when", "where",
        "which", "who", "why", "with",
    }
)  # fmt: skip
_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")

_load_lock = threading.Lock()
_loaded = False


def segment_for_search(text: str) -> str:
    """Space-joined search-mode words of ``text``, for ``to_tsvector('simple', ...)``."""
    return " ".join(_words(text))


def query_terms(text: str) -> list[str]:
    """Distinct search words of a user's question, in order, without function words.

    Segmented exactly like indexed text so that the terms match; if a question is nothing
    but function words, they are kept rather than returning nothing.
    """
    words = list(dict.fromkeys(_words(text)))
    content = [word for word in words if word not in _STOPWORDS]
    return content or words


def register_terms(terms: Iterable[str]) -> None:
    """Teach the segmenter extra words (product names, internal jargon) for this process."""
    _ensure_loaded()
    for term in terms:
        term = term.strip()
        if term:
            jieba.add_word(term)


def _words(text: str) -> Iterator[str]:
    """Search-mode words, lowercased, with punctuation-only tokens dropped.

    NFKC first folds full-width letters and digits (ＡＢＣ１２３) into their ASCII forms.
    """
    _ensure_loaded()
    for token in jieba.cut_for_search(unicodedata.normalize("NFKC", text)):
        word = _EDGE_PUNCTUATION.sub("", token.lower())
        if word:
            yield word


def _ensure_loaded() -> None:
    """Load jieba's dictionary once per process, quietly, on first use rather than at import."""
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if _loaded:
            return
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        for term in _WORKPLACE_TERMS:
            jieba.add_word(term)
        _loaded = True

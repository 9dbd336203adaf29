"""Text folding for sensitive-word matching.

Every character is folded on its own (NFKC, case fold, traditional → simplified, drop
separators/punctuation/symbols/marks/controls). Because the folding is per character,
``normalize(a + b)`` always equals the concatenation of ``normalize(a)`` and
``normalize(b)`` (with shifted indexes), which is what lets :class:`StreamGuard` fold a
streamed answer piece by piece.
"""

from __future__ import annotations

import functools
import unicodedata

import opencc

__all__ = ["fold_char", "normalize"]

# Unicode general-category prefixes that never carry meaning for matching: separators
# (Z), punctuation (P), symbols incl. emoji (S), controls/format incl. zero-width
# characters (C), and combining marks (M), so "敏 感*词" and "敏\u200b感词" match "敏感词".
_IGNORED_CATEGORIES = frozenset("ZPSCM")

# Code-point ranges of CJK ideographs that the traditional → simplified table covers.
_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))


@functools.cache
def _t2s_table() -> dict[str, str]:
    """Build a one-character traditional → simplified table from OpenCC's dictionary.

    Character-level (not phrase-level) conversion keeps a 1:1 index map and folds a word
    the same way wherever it appears, so a listed word always matches itself.
    """
    converter = opencc.OpenCC("t2s")
    chars = [chr(cp) for first, last in _CJK_RANGES for cp in range(first, last + 1)]
    # A newline between characters stops OpenCC from applying phrase rules across them.
    converted = converter.convert("\n".join(chars)).split("\n")
    if len(converted) != len(chars):  # pragma: no cover - defensive, OpenCC keeps newlines
        converted = [converter.convert(ch) for ch in chars]
    return {
        src: dst for src, dst in zip(chars, converted, strict=True) if len(dst) == 1 and dst != src
    }


@functools.lru_cache(maxsize=65536)
def fold_char(char: str) -> str:
    """Fold one character to the zero or more characters it contributes to matching.

    Cached because chat text reuses a small alphabet and folding is pure.
    """
    table = _t2s_table()
    folded = []
    for piece in unicodedata.normalize("NFKC", char).casefold():
        if unicodedata.category(piece)[0] in _IGNORED_CATEGORIES:
            continue
        folded.append(table.get(piece, piece))
    return "".join(folded)


def normalize(text: str) -> tuple[str, list[int]]:
    """Fold ``text`` for matching and map each folded character back to its source.

    ``index_map[i]`` is the position in ``text`` of the character that produced folded
    character ``i``; masking needs it to hide the original, unfolded characters.
    """
    folded: list[str] = []
    index_map: list[int] = []
    for position, char in enumerate(text):
        piece = fold_char(char)
        if piece:
            folded.append(piece)
            index_map.extend([position] * len(piece))
    return "".join(folded), index_map

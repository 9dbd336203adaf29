"""Split parsed sections into retrieval chunks that respect headings, paragraphs and sentences.

Plain Python with no Django imports; the token counter is injectable so the ingest layer can
pass the embedding model's tokenizer while tests use the cheap estimate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from apps.knowledge.parsing import Section

CountTokens = Callable[[str], int]

_CJK_RANGES = (
    "\u3040-\u30ff"  # kana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # hangul
    "\U00020000-\U0003134f"  # CJK extensions B–H
)
_CJK_CHAR = re.compile(f"[{_CJK_RANGES}]")
_LATIN_WORD = re.compile(rf"[^\W_{_CJK_RANGES}]+")
_SYMBOL = re.compile(rf"[^\w\s{_CJK_RANGES}]|_")
_LATIN_TOKENS_PER_WORD = 1.3

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# CJK sentence ends need no following space; Latin ones do, so "3.14" or "v1.2" stay whole.
_SENTENCE_END = re.compile(r"(?:[。！？；]+|[!?]+|…+|\.+(?=\s|$|[\"'”’)\]]))[\"'”’」』）)\]]*")
# A list item: a bullet, "1." / "1)" / "1、" / "(1)" / "一、" / "a)" numbering.
_LIST_ITEM = re.compile(
    r"\s*(?:[-*+•·‣▪●○]\s|\d{1,3}[.)、．]|[（(]\d{1,3}[)）]|[一二三四五六七八九十]{1,3}、|[a-zA-Z][.)]\s)"
)
# The line that introduces a list ends with a colon.
_INTRODUCES = re.compile(r"[:：]\s*$")
# Hard-split atoms: one CJK character, or a run of anything else up to whitespace.
_ATOM = re.compile(rf"\s*(?:[{_CJK_RANGES}]|[^\s{_CJK_RANGES}]+)")


def estimate_tokens(text: str) -> int:
    """Cheap token estimate: a CJK character is one token, a Latin word about 1.3.

    Punctuation counts one each; the estimate errs high, which keeps chunks under a real
    model's limit.
    """
    cjk = len(_CJK_CHAR.findall(text))
    words = len(_LATIN_WORD.findall(text))
    symbols = len(_SYMBOL.findall(text))
    return cjk + symbols + math.ceil(words * _LATIN_TOKENS_PER_WORD)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrieval unit; ``position`` is its 0-based order over the whole document."""

    text: str
    heading_path: tuple[str, ...]
    position: int
    token_count: int
    page: int | None


@dataclass(frozen=True, slots=True)
class _Unit:
    """A paragraph, sentence or hard-split piece; ``sep`` joins it to the unit before it."""

    text: str
    sep: str


def chunk_sections(
    sections: Iterable[Section],
    *,
    chunk_size: int,
    overlap: int,
    count_tokens: CountTokens | None = None,
) -> list[Chunk]:
    """Chunk each section on its own, so no chunk ever mixes two headings.

    Inside a section whole paragraphs are packed first, then sentences, and a single
    sentence is hard-split only when it alone exceeds ``chunk_size``. Consecutive chunks of
    a section share about ``overlap`` tokens of whole trailing sentences.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if not 0 <= overlap < chunk_size:
        raise ValueError("overlap must be at least 0 and smaller than chunk_size")
    splitter = _SectionSplitter(chunk_size, overlap, count_tokens or estimate_tokens)
    chunks: list[Chunk] = []
    for section in sections:
        for text in splitter.split(section.text):
            chunks.append(
                Chunk(
                    text=text,
                    heading_path=section.heading_path,
                    position=len(chunks),
                    token_count=splitter.count(text),
                    page=section.page,
                )
            )
    return chunks


class _SectionSplitter:
    def __init__(self, chunk_size: int, overlap: int, count: CountTokens) -> None:
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.count = count

    def split(self, text: str) -> list[str]:
        """Greedy packing of units; each new chunk is seeded with the previous one's tail.

        A list stays with the line that introduces it ("…as follows:"): that line moves
        to the next chunk rather than end one without its items, and a list that goes on
        past a chunk repeats it first, so every part of the list says what it lists.
        """
        chunks: list[str] = []
        current: list[_Unit] = []
        intro: _Unit | None = None  # the introducing line of the list being packed
        for unit in self._units(text):
            is_item = _LIST_ITEM.match(unit.text) is not None
            if not is_item:
                intro = None
            if current and self._fits([*current, unit]):
                current.append(unit)
            elif not current:
                current = [unit]
            elif is_item and len(current) > 1 and _INTRODUCES.search(current[-1].text):
                chunks.append(_join(current[:-1]))
                current = [current[-1], unit]
                if not self._fits(current):
                    chunks.append(_join(current[:1]))
                    current = [unit]
            else:
                chunks.append(_join(current))
                seed = self._tail(current)
                while seed and not self._fits([*seed, unit]):
                    seed.pop(0)
                if is_item and intro is not None and self._fits([intro, unit]):
                    seed = [intro, *(part for part in seed if part != intro)]
                    while len(seed) > 1 and not self._fits([*seed, unit]):
                        seed.pop(1)
                current = [*seed, unit]
            if not is_item and _INTRODUCES.search(unit.text):
                intro = unit
        if current:
            chunks.append(_join(current))
        return chunks

    def _fits(self, units: list[_Unit]) -> bool:
        return self.count(_join(units)) <= self.chunk_size

    def _units(self, text: str) -> list[_Unit]:
        """Paragraphs that fit stay whole; others fall back to sentences, then hard pieces."""
        units: list[_Unit] = []
        for paragraph in _PARAGRAPH_BREAK.split(text.strip()):
            paragraph = paragraph.strip()
            if not paragraph:
                continue
            if self.count(paragraph) <= self.chunk_size:
                units.append(_Unit(paragraph, "\n\n"))
                continue
            for sentence in _sentences(paragraph, "\n\n"):
                if self.count(sentence.text) <= self.chunk_size:
                    units.append(sentence)
                else:
                    units.extend(self._hard_split(sentence))
        return units

    def _hard_split(self, unit: _Unit) -> list[_Unit]:
        """Cut an over-long sentence into the longest pieces that fit, at word or CJK
        character boundaries (a single over-long word is cut by characters)."""
        pieces: list[_Unit] = []
        atoms = _ATOM.findall(unit.text)
        sep = unit.sep
        while atoms:
            size = _longest_prefix(atoms, lambda parts: self._fits_text("".join(parts)))
            if size == 0:
                head, rest = _split_atom(atoms[0], self._fits_text)
                atoms[0] = rest
                pieces.append(_Unit(head.strip(), sep))
            else:
                pieces.append(_Unit("".join(atoms[:size]).strip(), sep))
                atoms = atoms[size:]
            if atoms:
                sep = " " if atoms[0][:1].isspace() else ""
        return [piece for piece in pieces if piece.text]

    def _fits_text(self, text: str) -> bool:
        return self.count(text.strip()) <= self.chunk_size

    def _tail(self, units: list[_Unit]) -> list[_Unit]:
        """Trailing whole sentences of a chunk worth at most ``overlap`` tokens.

        Falls back to the last words of the final sentence when even that sentence is
        longer than the overlap.
        """
        if self.overlap == 0:
            return []
        sentences = [s for unit in units for s in _sentences(unit.text, unit.sep)]
        taken: list[_Unit] = []
        for sentence in reversed(sentences):
            if self.count(_join([sentence, *taken])) > self.overlap:
                break
            taken.insert(0, sentence)
        if taken or not sentences:
            return taken
        last = sentences[-1]
        atoms = _ATOM.findall(last.text)
        size = _longest_suffix(
            atoms, lambda parts: self.count("".join(parts).strip()) <= self.overlap
        )
        return [_Unit("".join(atoms[-size:]).strip(), last.sep)] if size else []


def text_within(
    text: str, *, tokens: int, from_end: bool = False, count_tokens: CountTokens | None = None
) -> str:
    """The leading (or trailing) whole sentences of `text` worth at most `tokens`.

    For showing part of a neighbouring passage: a cut inside a sentence would hand the
    model a fragment that reads like a different rule.
    """
    count = count_tokens or estimate_tokens
    sentences = [s for p in _PARAGRAPH_BREAK.split(text.strip()) for s in _sentences(p, "\n\n")]
    if from_end:
        sentences.reverse()
    taken: list[_Unit] = []
    for sentence in sentences:
        candidate = [sentence, *taken] if from_end else [*taken, sentence]
        if count(_join(candidate)) > tokens:
            break
        taken = candidate
    return _join(taken)


def _sentences(paragraph: str, sep: str) -> list[_Unit]:
    """Split at CJK and Latin sentence ends and at line breaks, remembering the separators."""
    units: list[_Unit] = []
    for line_number, line in enumerate(paragraph.split("\n")):
        line_sep: str | None = sep if line_number == 0 else "\n"
        start = 0
        # A list item's number ("1. ") is not a sentence of its own.
        marker = _LIST_ITEM.match(line)
        ends = [m.end() for m in _SENTENCE_END.finditer(line, marker.end() if marker else 0)]
        for end in [*ends, len(line)]:
            raw = line[start:end]
            start = end
            text = raw.strip()
            if not text:
                continue
            if line_sep is None:
                line_sep = " " if raw[:1].isspace() else ""
            units.append(_Unit(text, line_sep))
            line_sep = None
    return units


def _join(units: list[_Unit]) -> str:
    if not units:
        return ""
    return units[0].text + "".join(unit.sep + unit.text for unit in units[1:])


def _longest_prefix(atoms: list[str], fits: Callable[[list[str]], bool]) -> int:
    """Largest n with ``fits(atoms[:n])``, by binary search (token counts grow with length)."""
    low, high = 0, len(atoms)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(atoms[:middle]):
            low = middle
        else:
            high = middle - 1
    return low


def _longest_suffix(atoms: list[str], fits: Callable[[list[str]], bool]) -> int:
    low, high = 0, len(atoms)
    while low < high:
        middle = (low + high + 1) // 2
        if fits(atoms[-middle:]):
            low = middle
        else:
            high = middle - 1
    return low


def _split_atom(atom: str, fits: Callable[[str], bool]) -> tuple[str, str]:
    """Cut one over-long word by characters; always makes progress, even if one character
    alone is over the limit."""
    size = _longest_prefix(list(atom), lambda chars: fits("".join(chars)))
    size = max(size, len(atom) - len(atom.lstrip()) + 1)
    return atom[:size], atom[size:]

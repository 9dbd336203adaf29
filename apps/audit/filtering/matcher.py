"""Sensitive-word matching over folded text, for stored messages and streamed answers.

Words and text are folded by :func:`~apps.audit.filtering.normalize.normalize`, then one
Aho–Corasick automaton finds every listed word in a single pass however long the list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import ahocorasick

from apps.audit.filtering.normalize import fold_char, normalize

__all__ = ["Match", "Span", "StreamGuard", "WordMatcher", "mask"]


class Span(Protocol):
    """Anything with a half-open ``[start, end)`` range over the original text."""

    @property
    def start(self) -> int: ...

    @property
    def end(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Match:
    """One listed word found in a text; ``start``/``end`` index the original text."""

    start: int
    end: int
    word: str
    rule_id: str


@dataclass(frozen=True, slots=True)
class _Key:
    """Automaton payload: every (word, rule) that folds to the same key."""

    length: int
    left_boundary: bool
    right_boundary: bool
    entries: tuple[tuple[str, str], ...]


def _is_word_char(char: str) -> bool:
    return char.isascii() and char.isalnum()


class WordMatcher:
    """Find listed words in text, tolerant of width, case, script and inserted symbols.

    A word whose folded form starts (ends) with an ASCII letter or digit only matches
    where the text has no ASCII letter or digit right before (after) it, so "ass" does not
    fire inside "class"; CJK words match anywhere, as Chinese has no word spaces.
    """

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        """Build the automaton from ``(word, rule_id)`` pairs.

        Raises ``ValueError`` for a word that folds to nothing (e.g. "***"): it could never
        match, which is a list mistake an admin should see rather than a silent no-op.
        """
        grouped: dict[str, dict[tuple[str, str], None]] = {}
        for word, rule_id in entries:
            key, _ = normalize(word)
            if not key:
                raise ValueError(f"word {word!r} (rule {rule_id!r}) has no matchable characters")
            grouped.setdefault(key, {})[(word, rule_id)] = None
        self._automaton: ahocorasick.Automaton | None = None
        self._max_length = 0
        self._size = sum(len(group) for group in grouped.values())
        if not grouped:
            return
        automaton = ahocorasick.Automaton()
        for key, group in grouped.items():
            payload = _Key(
                length=len(key),
                left_boundary=_is_word_char(key[0]),
                right_boundary=_is_word_char(key[-1]),
                entries=tuple(group),
            )
            automaton.add_word(key, payload)
            self._max_length = max(self._max_length, len(key))
        automaton.make_automaton()
        self._automaton = automaton

    @classmethod
    def from_lists(cls, lists: Mapping[str, Iterable[str]]) -> WordMatcher:
        """Build from ``{rule_id: words}``, the shape word lists are stored in."""
        return cls((word, rule_id) for rule_id, words in lists.items() for word in words)

    def __len__(self) -> int:
        return self._size

    @property
    def max_key_length(self) -> int:
        """Longest folded word; :class:`StreamGuard` holds back this many folded chars."""
        return self._max_length

    def find(self, text: str) -> list[Match]:
        """Return every occurrence of every listed word, ordered by position."""
        folded, index_map = normalize(text)
        return self._scan(text, folded, index_map, 0, complete=True)

    def _scan(
        self, text: str, folded: str, index_map: list[int], start: int, *, complete: bool
    ) -> list[Match]:
        """Return the matches that lie wholly inside ``folded[start:]``.

        With ``complete=False`` the text may still grow, so an ASCII word touching the end
        of ``text`` is undecided ("ass" might become "assess") and is left for a later scan.
        """
        if self._automaton is None or start >= len(folded):
            return []
        found: dict[Match, None] = {}
        for last, key in self._automaton.iter(folded, start):
            first = last - key.length + 1
            if key.left_boundary and self._touches_left(text, folded, index_map, first):
                continue
            if key.right_boundary:
                verdict = self._touches_right(text, folded, index_map, last, complete=complete)
                if verdict is not False:  # glued to more letters, or not decidable yet
                    continue
            span_start, span_end = index_map[first], index_map[last] + 1
            for word, rule_id in key.entries:
                found[Match(span_start, span_end, word, rule_id)] = None
        return sorted(found, key=lambda m: (m.start, -m.end, m.rule_id, m.word))

    @staticmethod
    def _touches_left(text: str, folded: str, index_map: list[int], first: int) -> bool:
        """True when an ASCII letter or digit sits just before the match (a longer word)."""
        origin = index_map[first]
        if first > 0 and index_map[first - 1] == origin:  # inside one expanded char, e.g. "ﬁ"
            return _is_word_char(folded[first - 1])
        if origin == 0:
            return False
        before = fold_char(text[origin - 1])
        return bool(before) and _is_word_char(before[-1])

    @staticmethod
    def _touches_right(
        text: str, folded: str, index_map: list[int], last: int, *, complete: bool
    ) -> bool | None:
        """Like :meth:`_touches_left` for the right edge; None while the text may grow."""
        origin = index_map[last]
        if last + 1 < len(folded) and index_map[last + 1] == origin:
            return _is_word_char(folded[last + 1])
        if origin + 1 >= len(text):
            return False if complete else None
        after = fold_char(text[origin + 1])
        return bool(after) and _is_word_char(after[0])


def mask(text: str, spans: Iterable[Span], char: str = "*") -> str:
    """Replace every original character inside any span with ``char``, keeping length.

    Symbols inside a span are masked too, so "敏 感*词" becomes "*****" and the reader
    cannot reassemble the word from what is left.
    """
    if len(char) != 1:
        raise ValueError("mask character must be a single character")
    chars = list(text)
    for span in spans:
        if not 0 <= span.start <= span.end <= len(text):
            raise ValueError(f"span [{span.start}, {span.end}) is outside the text")
        chars[span.start : span.end] = char * (span.end - span.start)
    return "".join(chars)


class StreamGuard:
    """Release a streamed answer only as far as no listed word can still complete.

    Each ``feed`` returns the prefix that no present or future match can overlap: the
    last ``max_key_length`` folded characters (with any symbols between them) are held
    back. Once a word is seen, ``blocked`` turns True and nothing more is released, so a
    blocked word is never streamed out and then retracted; the caller sends a refusal.
    """

    def __init__(self, matcher: WordMatcher) -> None:
        self._matcher = matcher
        self._hold = matcher.max_key_length
        self._text = ""
        self._folded = ""
        self._index_map: list[int] = []
        self._released = 0
        self._finished = False
        self.blocked = False
        self.match: Match | None = None

    def feed(self, piece: str) -> str:
        """Add the next piece; return the text that is now safe to send (maybe "")."""
        if self._finished:
            raise RuntimeError("StreamGuard.feed() called after finish()")
        if self.blocked:
            return ""
        offset = len(self._text)
        scan_from = max(0, len(self._folded) - self._hold)
        folded, index_map = normalize(piece)
        self._text += piece
        self._folded += folded
        self._index_map.extend(position + offset for position in index_map)
        if self._check(scan_from, complete=False):
            return ""
        return self._release(self._safe_end())

    def finish(self) -> str:
        """Mark the end of the answer and return whatever is left, unless blocked."""
        if self._finished:
            return ""
        self._finished = True
        if self.blocked:
            return ""
        if self._check(max(0, len(self._folded) - self._hold), complete=True):
            return ""
        return self._release(len(self._text))

    def _safe_end(self) -> int:
        """Where the held-back tail starts in the original text.

        With nothing to hold (an empty word list: a policy of regex, personal-data or flag
        rules only) or only ignorable characters so far, everything fed is safe.
        """
        cut = len(self._folded) - self._hold
        if not self._folded or cut >= len(self._folded):
            return len(self._text)
        return self._index_map[max(0, cut)]

    def _check(self, scan_from: int, *, complete: bool) -> bool:
        matches = self._matcher._scan(
            self._text, self._folded, self._index_map, scan_from, complete=complete
        )
        if matches:
            self.blocked = True
            self.match = matches[0]
        return self.blocked

    def _release(self, safe_end: int) -> str:
        safe_end = max(safe_end, self._released)
        released = self._text[self._released : safe_end]
        self._released = safe_end
        return released

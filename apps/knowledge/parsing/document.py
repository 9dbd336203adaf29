"""Value types and text helpers shared by every format parser.

Kept free of parsing libraries so that chunking and the web layer can import them cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ParseErrorCode = Literal["corrupt", "encrypted", "empty", "unsupported", "too_large"]

# Bounds on what one document may turn into, so a small upload cannot make the ingest
# worker build millions of paragraphs (and then passages to embed).
MAX_PARAGRAPHS = 200_000
MAX_TEXT_CHARS = 20_000_000


@dataclass(frozen=True, slots=True)
class Section:
    """Text under one heading path; chunking never lets a chunk cross a section."""

    heading_path: tuple[str, ...]
    text: str
    page: int | None = None


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """A document reduced to its title and heading-ordered sections.

    ``pages`` is the page count for PDFs, the sheet count for workbooks and 1 for flowing
    text (Word's own page count when the file records one).
    """

    title: str
    sections: list[Section]
    pages: int


class DocumentParseError(Exception):
    """A document we cannot index; ``code`` is stable so the web layer can translate it."""

    def __init__(self, code: ParseErrorCode, message: str) -> None:
        # Both go to args so the error survives pickling (Celery results, multiprocessing).
        super().__init__(code, message)
        self.code: ParseErrorCode = code
        self.message = message

    def __str__(self) -> str:
        return self.message


_INVISIBLE = re.compile(r"[\u200b-\u200d\u2060\ufeff\u00ad]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HORIZONTAL_SPACE = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def tidy_text(text: str) -> str:
    """Normalise line endings and whitespace so that every parser feeds chunking the same shape.

    Paragraphs end up separated by exactly one blank line, which chunking treats as the
    strongest split point inside a section.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n\n")
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub("", text)
    text = _HORIZONTAL_SPACE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def tidy_inline(text: str) -> str:
    """Collapse a heading or table cell onto one line, since it is used as a label."""
    return " ".join(tidy_text(text).split())


def render_records(rows: Sequence[Sequence[str]]) -> str:
    """Render a table as ``header: value`` lines, one paragraph per row.

    Repeating the header beside each value keeps a row meaningful after chunking has cut
    the table apart, which plain grid text would not.
    """
    rows = [[tidy_inline(cell) for cell in row] for row in rows]
    rows = [row for row in rows if any(row)]
    if not rows:
        return ""
    header, *body = rows
    if not body:
        return " | ".join(cell for cell in header if cell)
    width = max(len(row) for row in rows)
    labels = [
        (header[i] if i < len(header) and header[i] else _column_letter(i)) for i in range(width)
    ]
    records = []
    for row in body:
        lines = [f"{labels[i]}: {value}" for i, value in enumerate(row) if value]
        records.append("\n".join(lines))
    return "\n\n".join(records)


def _column_letter(index: int) -> str:
    """Spreadsheet-style name (A, B, …, AA) for a column that has no header."""
    name = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        name = chr(ord("A") + remainder) + name
    return name


def too_many_paragraphs() -> DocumentParseError:
    return DocumentParseError(
        "too_large",
        f"The document has more than {MAX_PARAGRAPHS:,} paragraphs or rows. Split it into "
        "smaller documents.",
    )


class SectionBuilder:
    """Turns a stream of headings and paragraphs into sections.

    Every format shares it, so heading paths behave the same whether they came from
    Markdown ``#`` levels, HTML ``h1``–``h6`` or Word heading styles.
    """

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []
        self._paragraphs: list[str] = []
        self._sections: list[Section] = []
        self._count = 0

    def heading(self, level: int, title: str) -> None:
        title = tidy_inline(title)
        if not title:
            return
        self._flush()
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))

    def paragraph(self, text: str) -> None:
        text = tidy_text(text)
        if text:
            self._count += 1
            if self._count > MAX_PARAGRAPHS:
                raise too_many_paragraphs()
            self._paragraphs.append(text)

    def build(self) -> list[Section]:
        self._flush()
        return self._sections

    def _flush(self) -> None:
        if self._paragraphs:
            path = tuple(title for _, title in self._stack)
            self._sections.append(Section(path, "\n\n".join(self._paragraphs)))
            self._paragraphs = []

"""PDF text, one section per page, with headings taken from the outline (bookmarks)."""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from pypdf import PdfReader
from pypdf.generic import Destination

from .document import DocumentParseError, ParsedDocument, Section, tidy_inline, tidy_text

# Checked before any page is read: text extraction costs time and memory per page.
MAX_PAGES = 5000

logger = logging.getLogger(__name__)

_PLACEHOLDER_TITLES = frozenset({"untitled", "untitled document", "无标题", "anonymous"})
_WORD_EXPORT_PREFIX = re.compile(r"^Microsoft (?:Word|PowerPoint|Excel) - ", re.I)
_SENTENCE_END = tuple("。！？；：.!?;:")
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uf900-\ufaff\uff00-\uffef]")
# A line at least this share of the page's longest line is treated as soft-wrapped.
_WRAPPED_LINE_RATIO = 0.8


@dataclass(frozen=True, slots=True)
class _Bookmark:
    page: int
    path: tuple[str, ...]


def parse_pdf(path: Path, *, title: str) -> ParsedDocument:
    """Extract page text with pypdf; a PDF that opens only with a password is refused."""
    reader = PdfReader(path)
    if reader.is_encrypted and not _opens_without_password(reader):
        raise DocumentParseError(
            "encrypted", "The PDF is password-protected. Remove the password and upload it again."
        )
    page_count = len(reader.pages)
    if page_count == 0:
        raise DocumentParseError("corrupt", "The PDF has no pages; the file may be damaged.")
    if page_count > MAX_PAGES:
        raise DocumentParseError(
            "too_large",
            f"The PDF has {page_count:,} pages, more than the {MAX_PAGES:,} allowed. Split it "
            "into smaller documents.",
        )
    texts: list[str] = []
    failures = 0
    for number, page in enumerate(reader.pages, start=1):
        try:
            texts.append(_unwrap_lines(tidy_text(page.extract_text() or "")))
        except Exception:  # one bad page should not cost the rest of the document
            logger.warning("Could not extract text from PDF page %d", number, exc_info=True)
            failures += 1
            texts.append("")
    if failures == page_count:
        raise DocumentParseError("corrupt", "No page of the PDF could be read; it may be damaged.")
    if not any(texts):
        raise DocumentParseError(
            "empty",
            "The PDF contains no extractable text; it is probably a scanned image. "
            "Run OCR on it and upload the result.",
        )
    bookmarks = _bookmarks(reader)
    sections = _page_sections(texts, bookmarks)
    return ParsedDocument(title=_title(reader) or title, sections=sections, pages=page_count)


def _opens_without_password(reader: PdfReader) -> bool:
    """Owner-only protection (no password to open) is common and harmless for reading."""
    try:
        return bool(reader.decrypt(""))
    except Exception:  # an encryption scheme pypdf cannot handle is still "encrypted" to us
        logger.info("PDF decryption with an empty password failed", exc_info=True)
        return False


def _title(reader: PdfReader) -> str:
    try:
        raw = reader.metadata.title if reader.metadata else None
    except Exception:  # metadata is optional; a broken info dictionary must not fail the file
        return ""
    value = _WORD_EXPORT_PREFIX.sub("", tidy_inline(str(raw or "")))
    return "" if value.lower() in _PLACEHOLDER_TITLES else value


def _bookmarks(reader: PdfReader) -> list[_Bookmark]:
    """Flatten the outline into (page, heading path) in outline order; bad entries are skipped."""
    found: list[_Bookmark] = []

    def walk(items: list, parents: tuple[str, ...]) -> None:
        current: tuple[str, ...] = parents
        for item in items:
            if isinstance(item, list):
                walk(item, current)
                continue
            if not isinstance(item, Destination):
                continue
            heading = tidy_inline(str(item.title or ""))
            if not heading:
                continue
            current = (*parents, heading)
            try:
                page = reader.get_destination_page_number(item)
            except Exception:  # a dangling destination only loses that one heading
                logger.info("Ignoring PDF bookmark %r", heading, exc_info=True)
                continue
            if page is not None and page >= 0:
                found.append(_Bookmark(page, current))

    try:
        walk(reader.outline, ())
    except Exception:  # an unreadable outline only costs us the heading paths
        logger.warning("Ignoring unreadable PDF outline", exc_info=True)
    return found


def _page_sections(texts: list[str], bookmarks: list[_Bookmark]) -> list[Section]:
    """One section per page, split further where a bookmark's title appears on the page.

    Text above a bookmark's title still belongs to the previous heading; when the title
    cannot be found, the whole rest of the page goes to the new heading.
    """
    by_page: dict[int, list[_Bookmark]] = {}
    for bookmark in bookmarks:
        by_page.setdefault(bookmark.page, []).append(bookmark)
    sections: list[Section] = []
    heading_path: tuple[str, ...] = ()
    for index, text in enumerate(texts):
        page = index + 1
        cursor = 0
        for bookmark in by_page.get(index, ()):
            match = _title_pattern(bookmark.path[-1]).search(text, cursor)
            if match:
                _append(sections, heading_path, text[cursor : match.start()], page)
                cursor = match.start()
            heading_path = bookmark.path
        _append(sections, heading_path, text[cursor:], page)
    return sections


def _append(sections: list[Section], path: tuple[str, ...], text: str, page: int) -> None:
    text = text.strip()
    if text:
        sections.append(Section(path, text, page))


def _title_pattern(title: str) -> re.Pattern[str]:
    """Match a bookmark title in page text whatever whitespace extraction put inside it."""
    characters = [re.escape(char) for char in title if not char.isspace()]
    return re.compile(r"\s*".join(characters))


def _unwrap_lines(text: str) -> str:
    """Join lines that the PDF wrapped only for layout, so sentences are not cut at line ends.

    A line close to the page's longest line that does not end a sentence continues on the
    next line; shorter lines end their paragraph.
    """
    lines = text.split("\n")
    longest = max((len(line) for line in lines), default=0)
    if longest == 0:
        return text
    out = [lines[0]]
    for previous, line in itertools.pairwise(lines):
        wrapped = (
            line
            and previous
            and len(previous) >= longest * _WRAPPED_LINE_RATIO
            and not previous.endswith(_SENTENCE_END)
        )
        if wrapped:
            joiner = "" if _CJK.match(previous[-1]) and _CJK.match(line[0]) else " "
            out[-1] += joiner + line
        else:
            out.append(line)
    return "\n".join(out)

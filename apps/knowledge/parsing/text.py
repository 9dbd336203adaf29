"""Plain text and CSV, plus the encoding detection that every text-based format shares."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

from charset_normalizer import from_bytes

from .document import DocumentParseError, ParsedDocument, Section, render_records, tidy_text

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_GB_FAMILY = frozenset({"gb2312", "gbk", "gb18030", "hz", "cp936"})
# Detection on short text often ties; chaos within this margin counts as a tie, and the
# tie goes to the legacy encodings Chinese and Western Windows machines write.
_CHAOS_TIE = 0.01
_PREFERRED_ON_TIE = ("gb18030", "cp1252")


def decode_text(data: bytes, *, declared: str | None = None) -> str:
    """Decode uploaded text: BOM, then a declared charset, then UTF-8, then detection.

    GB2312 and GBK are read as GB18030, their superset, so rare characters decode too; on a
    detection tie GB18030 wins because uploads come from Chinese workplaces.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _decode(data, encoding)
    if declared:
        encoding = _canonical(declared)
        if encoding:
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    matches = list(from_bytes(data))
    if not matches:
        raise DocumentParseError(
            "corrupt", "The file is not readable text: its character encoding is unknown."
        )
    least_chaos = min(match.chaos for match in matches)
    tied = {_canonical(m.encoding) for m in matches if m.chaos <= least_chaos + _CHAOS_TIE}
    for encoding in _PREFERRED_ON_TIE:
        if encoding in tied:
            return _decode(data, encoding)
    return _decode(data, matches[0].encoding)


def _canonical(encoding: str) -> str | None:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return None
    return "gb18030" if name in _GB_FAMILY else name


def _decode(data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DocumentParseError(
            "corrupt", f"The file claims to be {encoding} text but contains invalid bytes."
        ) from exc


def parse_txt(path: Path, *, title: str) -> ParsedDocument:
    """Plain text has no structure to recover, so it becomes a single untitled section."""
    text = tidy_text(decode_text(path.read_bytes()))
    return ParsedDocument(title=title, sections=[Section((), text)], pages=1)


def parse_csv(path: Path, *, title: str) -> ParsedDocument:
    """Render each row as ``header: value`` lines so a chunk stays readable without the header."""
    text = decode_text(path.read_bytes())
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
            text[:8192], delimiters=",\t;|"
        )
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text), dialect))
    except csv.Error as exc:
        raise DocumentParseError("corrupt", f"The CSV file is malformed: {exc}.") from exc
    return ParsedDocument(title=title, sections=[Section((), render_records(rows))], pages=1)

"""Word (.docx) and Excel (.xlsx) files, read with python-docx and openpyxl."""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from pathlib import Path
from typing import Any

import docx
import openpyxl
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml import etree

from .document import (
    MAX_PARAGRAPHS,
    ParsedDocument,
    Section,
    SectionBuilder,
    render_records,
    tidy_inline,
    too_many_paragraphs,
)

_HEADING_STYLE = re.compile(r"^(?:heading|标题)\s*([1-9])$", re.I)
_MAX_STYLE_DEPTH = 10
_APP_PROPERTIES = "docProps/app.xml"
_APP_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/extended-properties}"


def parse_docx(path: Path, *, title: str) -> ParsedDocument:
    """Body paragraphs and tables in order; Word heading styles become the heading path.

    Page headers, footers and comments are left out: they repeat on every page or are
    not part of the text a reader would cite.
    """
    document = docx.Document(str(path))
    builder = SectionBuilder()
    doc_title = tidy_inline(document.core_properties.title or "")
    # python-docx looks a paragraph's style up by a linear scan of the styles part, about
    # 1 ms each (a third of a 40-section document's parse): once per style id is enough.
    styles: dict[str | None, Any] = {}
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            builder.paragraph(render_records(_table_rows(block)))
            continue
        style_id = block._p.style
        if style_id not in styles:
            styles[style_id] = block.style
        style = styles[style_id]
        if _style_name(style) == "Title":
            doc_title = doc_title or tidy_inline(block.text)
            continue
        level = _heading_level(block, style)
        if level:
            builder.heading(level, block.text)
        else:
            builder.paragraph(block.text)
    return ParsedDocument(
        title=doc_title or title, sections=builder.build(), pages=_word_page_count(path)
    )


def _style_name(style: Any) -> str:
    return style.name if style is not None and style.name else ""


def _heading_level(paragraph: Paragraph, style: Any) -> int | None:
    """Heading level from the style name, else from an outline level set on the paragraph
    or its style chain (how WPS and localised templates often mark headings); `style` is
    the paragraph's."""
    match = _HEADING_STYLE.match(_style_name(style))
    if match:
        return int(match.group(1))
    elements = [paragraph._p]
    while style is not None and len(elements) <= _MAX_STYLE_DEPTH:  # bounded: chains can loop
        elements.append(style.element)
        style = style.base_style
    for element in elements:
        values = element.xpath("./w:pPr/w:outlineLvl/@w:val")
        if values:
            level = int(values[0])
            return level + 1 if level < 9 else None
    return None


def _table_rows(table: Table) -> list[list[str]]:
    """Cell texts per row, with horizontally merged cells (repeated by python-docx) kept once."""
    rows = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is not previous:
                cells.append(cell.text)
            previous = cell._tc
        rows.append(cells)
    return rows


def _word_page_count(path: Path) -> int:
    """Word records its page count at save time; without it a flowing document counts as 1."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = etree.fromstring(archive.read(_APP_PROPERTIES))
        pages = root.findtext(f"{_APP_NS}Pages")
        return max(int(pages), 1) if pages else 1
    except (KeyError, ValueError, zipfile.BadZipFile, etree.XMLSyntaxError):
        return 1


def parse_xlsx(path: Path, *, title: str) -> ParsedDocument:
    """One section per worksheet, each data row rendered as ``header: value`` lines.

    Cached formula results are read (``data_only``) because formulas mean nothing to a reader.
    """
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        sections = []
        row_count = 0
        for sheet in workbook.worksheets:
            rows = []
            # Counted while streaming: a sheet can declare a million rows in a small file.
            for row in sheet.iter_rows(values_only=True):
                row_count += 1
                if row_count > MAX_PARAGRAPHS:
                    raise too_many_paragraphs()
                rows.append([_cell_text(cell) for cell in row])
            sections.append(Section((tidy_inline(sheet.title),), render_records(rows)))
        doc_title = tidy_inline(workbook.properties.title or "")
        sheet_count = len(workbook.worksheets)
    finally:
        workbook.close()
    return ParsedDocument(
        title=doc_title or title,
        sections=[section for section in sections if section.text],
        pages=max(sheet_count, 1),
    )


def _cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)

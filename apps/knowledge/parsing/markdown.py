"""Markdown, parsed with markdown-it-py so headings inside code fences are not taken as headings."""

from __future__ import annotations

import re
from pathlib import Path

from bs4 import BeautifulSoup
from markdown_it import MarkdownIt
from markdown_it.token import Token

from .document import (
    MAX_PARAGRAPHS,
    ParsedDocument,
    SectionBuilder,
    render_records,
    tidy_inline,
    too_many_paragraphs,
)
from .text import decode_text

_FRONT_MATTER = re.compile(r"\A---\n.*?\n(?:---|\.\.\.)\n", re.DOTALL)
_PARSER = MarkdownIt("commonmark").enable("table").enable("strikethrough")
_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def parse_markdown(path: Path, *, title: str) -> ParsedDocument:
    """Headings become the heading path; lists, tables and code become paragraphs."""
    source = decode_text(path.read_bytes()).replace("\r\n", "\n")
    source = _FRONT_MATTER.sub("", source, count=1)
    # Refused before the parse, which would take seconds of CPU on such a file: blocks
    # between blank lines bound the paragraphs (a fenced block may hold several of them).
    if len(_BLANK_LINES.findall(source)) > MAX_PARAGRAPHS:
        raise too_many_paragraphs()
    tokens = _PARSER.parse(source)
    builder = SectionBuilder()
    first_h1: str | None = None
    list_markers: list[str] = []
    pending_marker = ""
    table_rows: list[list[str]] | None = None
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.type == "heading_open":
            text = _inline_text(tokens[index + 1])
            level = int(token.tag[1])
            if level == 1 and first_h1 is None:
                first_h1 = tidy_inline(text)
            builder.heading(level, text)
            index += 3
            continue
        if token.type in ("bullet_list_open", "ordered_list_open"):
            list_markers.append("-" if token.type == "bullet_list_open" else "1.")
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            list_markers.pop()
        elif token.type == "list_item_open":
            marker = token.info + "." if token.info else list_markers[-1]
            pending_marker = "  " * (len(list_markers) - 1) + marker + " "
        elif token.type == "table_open":
            table_rows = []
        elif token.type == "table_close" and table_rows is not None:
            builder.paragraph(render_records(table_rows))
            table_rows = None
        elif token.type == "tr_open" and table_rows is not None:
            table_rows.append([])
        elif token.type == "inline" and table_rows is not None:
            table_rows[-1].append(_inline_text(token))
        elif token.type == "inline":
            builder.paragraph(pending_marker + _inline_text(token))
            pending_marker = ""
        elif token.type in ("fence", "code_block"):
            builder.paragraph(token.content)
        elif token.type == "html_block":
            builder.paragraph(BeautifulSoup(token.content, "lxml").get_text(" "))
        index += 1
    return ParsedDocument(title=first_h1 or title, sections=builder.build(), pages=1)


def _inline_text(token: Token) -> str:
    """Plain text of an inline token: link text kept, markup and inline HTML dropped."""
    parts: list[str] = []
    for child in token.children or ():
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "image":
            parts.append(child.content)
    return "".join(parts)

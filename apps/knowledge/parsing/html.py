"""HTML pages reduced to their main content with explicit, predictable rules.

We use BeautifulSoup on lxml with stated rules rather than a readability heuristic: uploads
are intranet pages and wiki exports, often short, where scoring heuristics tend to throw away
real content, and explicit rules keep the ``h1``–``h6`` structure that sections need.
"""

from __future__ import annotations

import re
from pathlib import Path

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import Comment, Doctype, ProcessingInstruction

from .document import ParsedDocument, SectionBuilder, render_records, tidy_inline
from .text import decode_text

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_NEVER_CONTENT = (
    "script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed",
    "head", "input", "button", "select", "textarea", "option", "dialog", "map",
)  # fmt: skip
_PAGE_CHROME = ("nav", "aside", "menu")
_LANDMARK_ROLES = frozenset(
    {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar",
     "dialog", "alertdialog", "toolbar"}
)  # fmt: skip
_BOILERPLATE_NAME = re.compile(
    r"\b(cookies?|cookie-\w+|consent|gdpr|breadcrumbs?|sidebar|side-bar|navbar|nav|navigation|"
    r"menu|site-header|site-footer|page-footer|global-header|masthead|footer|toolbar|share|"
    r"social|advert\w*|ads?|popup|modal|skip-link|comments?|related)\b",
    re.I,
)
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_BLOCKS = frozenset(
    {"p", "div", "section", "article", "main", "header", "footer", "blockquote", "pre", "ul",
     "ol", "li", "dl", "dt", "dd", "figure", "figcaption", "address", "details", "summary",
     "hr", "form", "fieldset", "center", "body", "caption"}
)  # fmt: skip
_WHITESPACE = re.compile(r"\s+")


def parse_html(path: Path, *, title: str) -> ParsedDocument:
    """Keep the page's main content as heading-ordered sections; drop page chrome."""
    data = path.read_bytes()
    declared = _META_CHARSET.search(data[:4096])
    text = decode_text(data, declared=declared.group(1).decode("ascii") if declared else None)
    soup = BeautifulSoup(text, "lxml")
    page_title = tidy_inline(soup.title.get_text()) if soup.title else ""
    root = _content_root(soup)
    _strip_chrome(root)
    builder = SectionBuilder()
    _Walker(builder).block(root)
    sections = builder.build()
    if not page_title:
        heading = root.find("h1")
        page_title = tidy_inline(heading.get_text()) if heading else ""
    return ParsedDocument(title=page_title or title, sections=sections, pages=1)


def _content_root(soup: BeautifulSoup) -> Tag:
    """The page's own main element when it marks one, else the body."""
    main = soup.find("main") or soup.find(attrs={"role": "main"})
    if isinstance(main, Tag):
        return main
    articles = soup.find_all("article")
    if len(articles) == 1:
        return articles[0]
    body = soup.body
    return body if body is not None else soup


def _strip_chrome(root: Tag) -> None:
    """Remove navigation, banners, footers, asides, hidden parts and cookie notices."""
    for tag in root.find_all(_NEVER_CONTENT):
        tag.decompose()
    for node in root.find_all(string=lambda s: isinstance(s, Comment | ProcessingInstruction)):
        node.extract()
    for tag in list(root.find_all(True)):
        if tag.decomposed or not _is_chrome(tag):
            continue
        if tag.find(["main", "article"]) is not None:
            continue  # a wrapper that also holds the content: keep it, drop its parts instead
        tag.decompose()


def _is_chrome(tag: Tag) -> bool:
    if tag.name in _PAGE_CHROME:
        return True
    # A header or footer inside an article belongs to it (the article's title and byline);
    # outside one it is the site's banner or footer.
    if tag.name in ("header", "footer"):
        return tag.find_parent(["article", "main"]) is None
    attrs = tag.attrs or {}
    if attrs.get("role", "").lower() in _LANDMARK_ROLES:
        return True
    if "hidden" in attrs or attrs.get("aria-hidden", "").lower() == "true":
        return True
    if _HIDDEN_STYLE.search(attrs.get("style", "")):
        return True
    names = " ".join([*attrs.get("class", []), attrs.get("id", "")])
    return bool(names.strip()) and _BOILERPLATE_NAME.search(names) is not None


class _Walker:
    """Walks the content tree in order, turning blocks into paragraphs and h1–h6 into headings."""

    def __init__(self, builder: SectionBuilder) -> None:
        self.builder = builder
        self.inline: list[str] = []

    def block(self, tag: Tag) -> None:
        for child in tag.children:
            if isinstance(child, Doctype | Comment):
                continue
            if isinstance(child, NavigableString):
                self.inline.append(_WHITESPACE.sub(" ", str(child)))
            elif isinstance(child, Tag):
                self.element(child)
        self.flush()

    def element(self, tag: Tag) -> None:
        if tag.name in _HEADINGS:
            self.flush()
            self.builder.heading(int(tag.name[1]), tag.get_text(" "))
        elif tag.name == "br":
            self.inline.append("\n")
        elif tag.name == "pre":
            self.flush()
            self.builder.paragraph(tag.get_text())
        elif tag.name == "table" and tag.find("table") is None:
            self.flush()
            self.builder.paragraph(_render_table(tag))
        elif tag.name == "li":
            self.flush()
            self.inline.append("- ")
            self.block(tag)
        elif tag.name in _BLOCKS or tag.name in ("table", "tbody", "thead", "tr", "td", "th"):
            self.flush()
            self.block(tag)
        else:
            self.block_inline(tag)

    def block_inline(self, tag: Tag) -> None:
        """Inline elements can still hold blocks in sloppy HTML, so walk rather than get_text."""
        for child in tag.children:
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                self.inline.append(_WHITESPACE.sub(" ", str(child)))
            elif isinstance(child, Tag):
                self.element(child)

    def flush(self) -> None:
        text = "".join(self.inline).strip()
        self.inline = []
        if text and text != "-":
            self.builder.paragraph(text)


def _render_table(table: Tag) -> str:
    rows = []
    for row in table.find_all("tr"):
        cells = row.find_all(["th", "td"])
        rows.append([cell.get_text(" ") for cell in cells])
    return render_records(rows)

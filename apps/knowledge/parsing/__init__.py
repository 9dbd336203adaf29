"""Turn an uploaded file into a title and heading-ordered sections for the knowledge base.

Plain Python with no Django imports. Format libraries are imported only when a file of
that format arrives, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import logging
import zipfile
from pathlib import Path

from .document import (
    MAX_PARAGRAPHS,
    MAX_TEXT_CHARS,
    DocumentParseError,
    ParsedDocument,
    ParseErrorCode,
    Section,
    too_many_paragraphs,
)

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "DocumentParseError",
    "ParseErrorCode",
    "ParsedDocument",
    "Section",
    "parse_document",
]

logger = logging.getLogger(__name__)

# extension -> (module, function); the module is imported on first use.
_PARSERS: dict[str, tuple[str, str]] = {
    "txt": ("text", "parse_txt"),
    "text": ("text", "parse_txt"),
    "csv": ("text", "parse_csv"),
    "md": ("markdown", "parse_markdown"),
    "markdown": ("markdown", "parse_markdown"),
    "html": ("html", "parse_html"),
    "htm": ("html", "parse_html"),
    "pdf": ("pdf", "parse_pdf"),
    "docx": ("office", "parse_docx"),
    "xlsx": ("office", "parse_xlsx"),
}
SUPPORTED_EXTENSIONS = frozenset(_PARSERS)
_TEXT_KINDS = frozenset({"txt", "text", "csv", "md", "markdown", "html", "htm"})

_LEGACY_OFFICE = frozenset({"doc", "xls", "ppt", "pptx", "wps", "et", "dps"})
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_ENCRYPTION_STREAM = "EncryptionInfo".encode("utf-16-le")
_SNIFF_BYTES = 1024
# Office files are zip archives; refuse ones that would inflate past this (zip bombs), in
# all or in any one part (the XML parts are parsed whole). Python's zipfile never inflates
# a part past its declared size, so checking the declared sizes bounds the real ones.
_MAX_UNPACKED_BYTES = 512 * 1024 * 1024
_MAX_PART_BYTES = 100 * 1024 * 1024
_MAX_PARTS = 10_000


def parse_document(
    path: Path, *, filename: str | None = None, max_bytes: int | None = None
) -> ParsedDocument:
    """Parse the file at ``path``; ``filename`` is the uploaded name when ``path`` is a temp file.

    Every failure that is the document's fault raises :class:`DocumentParseError`; an
    ``OSError`` reading ``path`` itself propagates, since retrying may fix it.
    """
    name = filename or path.name
    title = Path(name).stem or name
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise DocumentParseError(
            "too_large",
            f"The file is {_megabytes(size)}, over the {_megabytes(max_bytes)} upload limit.",
        )
    if size == 0:
        raise DocumentParseError("empty", "The file is empty.")
    with path.open("rb") as stream:
        head = stream.read(_SNIFF_BYTES)
    kind = _detect_kind(path, Path(name).suffix.lower().lstrip("."), head)
    module_name, function_name = _PARSERS[kind]
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
        document: ParsedDocument = getattr(module, function_name)(path, title=title)
    except DocumentParseError:
        raise
    except Exception as exc:  # any library failure on a bad file means the file is damaged
        logger.info("Parsing %s as %s failed", name, kind, exc_info=True)
        raise DocumentParseError(
            "corrupt", f"The file could not be read as {kind.upper()}; it may be damaged."
        ) from exc
    if not any(section.text.strip() for section in document.sections):
        raise DocumentParseError("empty", "The document contains no extractable text.")
    _check_extracted_size(document)
    return document


def _check_extracted_size(document: ParsedDocument) -> None:
    """The same caps for every format, also those without a SectionBuilder (text, PDF)."""
    if sum(len(section.text) for section in document.sections) > MAX_TEXT_CHARS:
        raise DocumentParseError(
            "too_large",
            f"The document has more than {MAX_TEXT_CHARS:,} characters of text. Split it "
            "into smaller documents.",
        )
    if sum(section.text.count("\n\n") + 1 for section in document.sections) > MAX_PARAGRAPHS:
        raise too_many_paragraphs()


def _detect_kind(path: Path, extension: str, head: bytes) -> str:
    """Trust the bytes over the name for binary formats, which are cheap to recognise."""
    # The PDF header may sit anywhere in the first kilobyte, but a text file may mention it too.
    if head.startswith(b"%PDF-") or (extension not in _TEXT_KINDS and b"%PDF-" in head):
        return "pdf"
    if head.startswith(_OLE_MAGIC):
        _refuse_ole(path, extension)
    if head.startswith(_ZIP_MAGIC):
        sniffed = _office_kind(path)
        if sniffed:
            return sniffed
    if extension in ("pdf", "docx", "xlsx"):
        raise DocumentParseError(
            "corrupt", f"The file is not a valid {extension.upper()} file; it may be damaged."
        )
    if extension in _PARSERS:
        return extension
    if extension in _LEGACY_OFFICE:
        raise DocumentParseError(
            "unsupported",
            f".{extension} files are not supported. Save the document as .docx, .xlsx or PDF "
            "and upload it again.",
        )
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")):
        return "html"
    supported = ", ".join(sorted(SUPPORTED_EXTENSIONS))
    raise DocumentParseError(
        "unsupported",
        f"This file type is not supported. Supported types: {supported}.",
    )


def _refuse_ole(path: Path, extension: str) -> None:
    """OLE compound files are either password-protected Office files or legacy binary ones."""
    # The stream name sits in the directory, so a bounded read finds it without an OLE parser.
    with path.open("rb") as stream:
        data = stream.read(4 * 1024 * 1024)
    if _OLE_ENCRYPTION_STREAM in data:
        raise DocumentParseError(
            "encrypted",
            "The Office file is password-protected. Remove the password and upload it again.",
        )
    raise DocumentParseError(
        "unsupported",
        "Legacy Office binary files (.doc, .xls, .ppt) are not supported. Save the document "
        "as .docx or .xlsx and upload it again.",
    )


def _office_kind(path: Path) -> str | None:
    """Tell .docx from .xlsx by the archive's parts, refusing zip bombs before any parser runs."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if len(infos) > _MAX_PARTS:
        raise DocumentParseError("too_large", f"The archive has more than {_MAX_PARTS:,} parts.")
    if sum(info.file_size for info in infos) > _MAX_UNPACKED_BYTES:
        raise DocumentParseError(
            "too_large",
            f"The archive unpacks to more than {_megabytes(_MAX_UNPACKED_BYTES)}.",
        )
    largest = max(infos, key=lambda info: info.file_size, default=None)
    if largest is not None and largest.file_size > _MAX_PART_BYTES:
        raise DocumentParseError(
            "too_large",
            f"A part of the archive ({largest.filename[:100]}) unpacks to more than "
            f"{_megabytes(_MAX_PART_BYTES)}.",
        )
    names = {info.filename for info in infos}
    if "word/document.xml" in names:
        return "docx"
    if "xl/workbook.xml" in names:
        return "xlsx"
    if "ppt/presentation.xml" in names:
        raise DocumentParseError(
            "unsupported",
            "PowerPoint files are not supported. Save the slides as PDF and upload it again.",
        )
    return None


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"

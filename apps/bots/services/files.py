"""Files employees send in a 1:1 chat: read in the worker, then sources for the next questions.

The callback (or the connector) only records the file and its five-minute URL; the worker
downloads, decrypts and parses it with the knowledge parsers, stores its text on the
conversation and answers the message with what it read or why it refused. Later questions in
the same conversation get the file's most relevant paragraphs before the question.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.bots.conversation_files import ConversationFile
from apps.bots.models import Bot, Conversation, Turn
from apps.bots.services.deliver import turn_fail, turn_finish
from apps.bots.services.stream import reply_language
from apps.knowledge.parsing import DocumentParseError, parse_document
from wecom.longconn.media import MediaError, media_download
from wecom.messages import FileAttachment

logger = logging.getLogger(__name__)

# What the knowledge parsers read that an employee is likely to send: PDF, Word, Excel,
# Markdown and plain text (HTML pages are left to the knowledge bases).
FILE_KINDS = frozenset({"pdf", "docx", "xlsx", "md", "markdown", "txt", "text", "csv"})
_PARAGRAPHS = re.compile(r"\n\s*\n")
_WORDS = re.compile(r"[\w]+", re.UNICODE)


@dataclass(frozen=True)
class FileExcerpt:
    filename: str
    text: str


def conversation_file_attach(
    *, bot: Bot, conversation: Conversation, turn: Turn, attachment: FileAttachment
) -> ConversationFile:
    """Record the file, its URL and key until the worker reads it (in the turn's transaction).

    A callback-mode file has no key of its own: WeCom encrypts it with the bot's
    EncodingAESKey.
    """
    return ConversationFile.objects.create(
        conversation=conversation,
        turn=turn,
        filename=attachment.filename,
        media_url=attachment.url,
        media_aeskey=attachment.aeskey or bot.encoding_aes_key,
    )


def conversation_file_read(*, turn: Turn) -> None:
    """Download, decrypt and parse the turn's file, then answer the message with the outcome."""
    file = ConversationFile.objects.filter(turn=turn).first()
    if file is None or file.status != ConversationFile.Status.PENDING:
        turn_fail(turn=turn, error="the file message has no file waiting to be read")
        return
    try:
        data = _download(file)
        kind = _kind(file.filename, data)
        text = _parse(file, kind, data)
    except _Refused as refused:
        ConversationFile.objects.filter(pk=file.pk).refuse_once(
            reason=refused.reason, detail=refused.detail, size=refused.size, now=timezone.now()
        )
        logger.info("turn %s: file refused (%s): %s", turn.pk, refused.reason, refused.detail)
        turn.fixed_reply_reason = Turn.FixedReplyReason.FILE_REFUSED
        turn_finish(turn=turn, reasoning="", answer=_refusal_reply(refused))
        return
    except OSError as exc:  # the worker's disk (temporary file): the employee gets the apology
        logger.exception("turn %s: reading the file failed", turn.pk)
        turn_fail(turn=turn, error=f"{type(exc).__name__}: {exc}")
        return
    ConversationFile.objects.filter(pk=file.pk).read_once(
        text=text, kind=kind, size=len(data), now=timezone.now()
    )
    turn.fixed_reply_reason = Turn.FixedReplyReason.FILE_READ
    with reply_language():
        reply = _(
            "I have read %(name)s (%(chars)s characters). Ask me about it: I will use it to "
            "answer your next questions in this chat."
        ) % {"name": file.filename or _("your file"), "chars": f"{len(text):,}"}
    turn_finish(turn=turn, reasoning="", answer=reply)


class _Refused(Exception):
    def __init__(self, reason: str, detail: str = "", *, size: int = 0) -> None:
        super().__init__(reason, detail)
        self.reason, self.detail, self.size = reason, detail, size


def _download(file: ConversationFile) -> bytes:
    _check_url(file.media_url)
    limit = settings.WECOM_FILE_MAX_BYTES
    try:
        return asyncio.run(
            media_download(url=file.media_url, aeskey=file.media_aeskey, max_bytes=limit)
        )
    except MediaError as exc:
        if "larger than" in str(exc):
            raise _Refused("too_large", str(exc), size=limit + 1) from None
        raise _Refused("download", str(exc)) from None


def _check_url(url: str) -> None:
    """https, or plain http to a loopback address in the test setting: no other targets.

    The URL comes from the message body; the worker must not fetch whatever it names.
    """
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    try:
        literal = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        literal = None
    if (
        parts.scheme == "http"
        and settings.WECOM_RESPONSE_URL_ALLOW_HTTP_LOOPBACK
        and literal is not None
        and literal.is_loopback
    ):
        return
    raise _Refused("download", "the file URL is not https")


def _kind(filename: str, data: bytes) -> str:
    """The extension, or for a file WeCom sent without a name, what its bytes look like."""
    extension = Path(filename).suffix.lower().lstrip(".")
    if extension:
        return extension
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        return "docx" if b"word/" in data[:65536] else "xlsx"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "bin"
    return "txt"


def _parse(file: ConversationFile, kind: str, data: bytes) -> str:
    if kind not in FILE_KINDS:
        raise _Refused("unsupported", kind, size=len(data))
    with tempfile.TemporaryDirectory(prefix="wecom-file-") as folder:
        path = Path(folder) / f"file.{kind}"
        path.write_bytes(data)
        try:
            parsed = parse_document(
                path, filename=file.filename or path.name, max_bytes=settings.WECOM_FILE_MAX_BYTES
            )
        except DocumentParseError as exc:
            raise _Refused(exc.code, exc.message, size=len(data)) from None
    blocks = []
    for section in parsed.sections:
        heading = " > ".join(section.heading_path)
        blocks.append(f"{heading}\n{section.text.strip()}" if heading else section.text.strip())
    text = "\n\n".join(block for block in blocks if block)
    if len(text) > settings.WECOM_FILE_MAX_CHARS:
        raise _Refused("too_large", f"{len(text)} characters of text", size=len(data))
    return text


def _refusal_reply(refused: _Refused) -> str:
    with reply_language():
        if refused.reason == "too_large":
            return _(
                "Sorry, this file is too large for me (at most %(mb)s MB and %(chars)s "
                "characters of text). Please send a shorter excerpt."
            ) % {
                "mb": settings.WECOM_FILE_MAX_BYTES // (1024 * 1024),
                "chars": f"{settings.WECOM_FILE_MAX_CHARS:,}",
            }
        if refused.reason in {"unsupported", "encrypted"}:
            return _(
                "Sorry, I can only read PDF, Word (.docx), Excel (.xlsx), Markdown and text "
                "files without a password. Please send the document in one of those formats."
            )
        if refused.reason == "download":
            return _(
                "Sorry, I could not fetch this file from WeCom (its link is only valid for "
                "five minutes). Please send it again."
            )
        return _("Sorry, I could not read this file: it seems empty or damaged.")


def image_reply() -> str:
    """Images get a polite text: no model profile here can look at pictures."""
    with reply_language():
        return _(
            "Sorry, I cannot look at pictures yet. Please describe what you need in words, "
            "or send the document as a PDF, Word, Excel or text file."
        )


def file_excerpts(*, turn: Turn, question: str, budget_chars: int) -> list[FileExcerpt]:
    """The paragraphs of the conversation's files that share most words with the question.

    Newest file first on ties; at most `budget_chars` in all, so a long file never crowds
    the question out of a small context window.
    """
    files = list(
        ConversationFile.objects.readable_in(conversation_id=turn.conversation_id).exclude(
            turn_id=turn.pk
        )
    )
    if not files or budget_chars <= 0:
        return []
    wanted = _terms(question)
    scored: list[tuple[float, int, int, str, str]] = []
    for age, file in enumerate(files):
        for position, paragraph in enumerate(_PARAGRAPHS.split(file.text)):
            paragraph = paragraph.strip()
            if paragraph:
                overlap = len(wanted & _terms(paragraph))
                scored.append((-overlap, age, position, file.filename, paragraph))
    scored.sort()
    chosen: list[tuple[int, int, str, str]] = []
    used = 0
    for _score, age, position, filename, paragraph in scored:
        if used + len(paragraph) > budget_chars:
            if not chosen:  # the best paragraph alone is over budget: its beginning then
                chosen.append((age, position, filename, paragraph[:budget_chars]))
            break
        chosen.append((age, position, filename, paragraph))
        used += len(paragraph)
    chosen.sort()  # back in reading order, file by file
    return [FileExcerpt(filename=f, text=p) for _a, _p, f, p in chosen]


def _terms(text: str) -> set[str]:
    """Words, and for Chinese (no spaces) its characters pairs, lower-cased."""
    terms: set[str] = set()
    for word in _WORDS.findall(text.lower()):
        if word.isascii():
            terms.add(word)
        else:
            terms.update(word[i : i + 2] for i in range(max(1, len(word) - 1)))
    return terms


def prompt_with_files(*, question: str, excerpts: list[FileExcerpt]) -> str:
    """The question with the employee's own files before it, labelled as theirs."""
    if not excerpts:
        return question
    with reply_language():
        blocks = [_("Excerpts of files the employee sent in this chat:")]
        for excerpt in excerpts:
            blocks.append(f"[{excerpt.filename or _('file')}]\n{excerpt.text}")
        blocks.append(_("Question: %(question)s") % {"question": question})
    return "\n\n".join(blocks)

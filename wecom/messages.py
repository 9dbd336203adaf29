"""Decrypted AI-bot callbacks in, reply payloads out (WeCom docs 100719, 101027, 101031).

Everything here works on plain dicts: `WeComCrypto.decrypt_callback` produces the input of
`parse_callback`, and the reply builders produce the input of `WeComCrypto.encrypt_reply`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# WeCom's documented cap on stream content, markdown and response_url payloads (UTF-8 bytes).
MAX_CONTENT_BYTES = 20480

# Caps far above anything WeCom sends; a payload beyond them is a bug or an attack, and
# rejecting it beats silently truncating what the user wrote.
MAX_ID_CHARS = 512
# Fields that are stored: a WeCom userid is 1-64 characters; msgid and chatid are opaque,
# and longer than anything WeCom sends at these lengths. Over them the callback is a 400,
# never a database error.
MAX_USERID_CHARS = 64
MAX_MSGID_CHARS = 128
MAX_CHATID_CHARS = 128
MAX_URL_CHARS = 8192
MAX_TEXT_CHARS = 65536
MAX_MIXED_ITEMS = 100

CHAT_TYPES = ("single", "group")
FEEDBACK_ACCURATE = 1
FEEDBACK_INACCURATE = 2
FEEDBACK_CANCELLED = 3

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class MalformedMessage(ValueError):
    """The decrypted callback is authentic but does not have the shape WeCom documents."""


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A user message (text, mixed, voice, image, file, video, ...) the bot may answer."""

    msgid: str
    aibotid: str
    chatid: str | None
    chattype: str
    userid: str
    response_url: str | None = field(repr=False)
    msgtype: str
    text: str | None
    image_urls: tuple[str, ...]
    quote: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def is_group(self) -> bool:
        """True in a group chat, where WeCom only delivers messages that @-mention the bot."""
        return self.chattype == "group"

    @property
    def conversation_key(self) -> str:
        """The chat the answer belongs to: the group's chatid, or the user in a 1:1 chat."""
        return self.chatid if self.chatid else self.userid


@dataclass(frozen=True, slots=True)
class StreamRefresh:
    """WeCom polling for the current state of a stream the bot opened earlier."""

    msgid: str
    aibotid: str
    chatid: str | None
    chattype: str
    userid: str
    stream_id: str
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class InboundEvent:
    """An event callback (enter_chat, template_card_event, feedback_event, ...)."""

    msgid: str
    aibotid: str
    chatid: str | None
    chattype: str
    userid: str
    eventtype: str
    event: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def feedback(self) -> dict[str, Any] | None:
        """The feedback body (`id`, `type` 1/2/3, optional `content`, `inaccurate_reason_list`).

        WeCom documents it under `event.feedback_event`; some implementers report `event.feedback`,
        so both are accepted.
        """
        if self.eventtype != "feedback_event":
            return None
        body = self.event.get("feedback_event", self.event.get("feedback"))
        return body if isinstance(body, dict) else None


Callback = InboundMessage | StreamRefresh | InboundEvent


# -- parsing --------------------------------------------------------------------------------


def _check_string(value: Any, where: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise MalformedMessage(f"{where} must be a string")
    if len(value) > max_chars:
        raise MalformedMessage(f"{where} is longer than {max_chars} characters")
    return value


def _required(
    container: dict[str, Any], key: str, where: str, *, max_chars: int = MAX_ID_CHARS
) -> str:
    """A string field that must be present and non-empty."""
    value = _check_string(container.get(key), where, max_chars)
    if not value:
        raise MalformedMessage(f"{where} must not be empty")
    return value


def _optional(
    container: dict[str, Any], key: str, where: str, *, max_chars: int = MAX_ID_CHARS
) -> str | None:
    """A string field that may be absent; absent and empty both read as None."""
    value = container.get(key)
    if value is None:
        return None
    return _check_string(value, where, max_chars) or None


def _object(container: dict[str, Any], key: str, where: str, *, required: bool = True) -> Any:
    value = container.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise MalformedMessage(f"{where} must be an object")
    return value


def _chattype(data: dict[str, Any], *, default: str | None) -> str:
    if data.get("chattype") is None and default is not None:
        return default
    chattype = _required(data, "chattype", "chattype")
    if chattype not in CHAT_TYPES:
        raise MalformedMessage("chattype must be 'single' or 'group'")
    return chattype


def _text_content(data: dict[str, Any], key: str) -> str:
    body = _object(data, key, key)
    if "content" not in body:
        raise MalformedMessage(f"{key}.content is missing")
    return _check_string(body["content"], f"{key}.content", MAX_TEXT_CHARS)


def _image_url(item: dict[str, Any], where: str) -> str | None:
    image = _object(item, "image", where, required=False)
    if image is None:
        return None
    return _optional(image, "url", f"{where}.url", max_chars=MAX_URL_CHARS)


def _mixed(data: dict[str, Any]) -> tuple[str | None, tuple[str, ...]]:
    items = _object(data, "mixed", "mixed").get("msg_item")
    if not isinstance(items, list):
        raise MalformedMessage("mixed.msg_item must be a list")
    if len(items) > MAX_MIXED_ITEMS:
        raise MalformedMessage(f"mixed.msg_item has more than {MAX_MIXED_ITEMS} items")
    texts: list[str] = []
    urls: list[str] = []
    for index, item in enumerate(items):
        where = f"mixed.msg_item[{index}]"
        if not isinstance(item, dict):
            raise MalformedMessage(f"{where} must be an object")
        kind = item.get("msgtype")
        if kind == "text":
            texts.append(_text_content(item, "text"))
        elif kind == "image":
            url = _image_url(item, f"{where}.image")
            if url:
                urls.append(url)
        # Other item kinds are ignored: the raw dict still carries them.
    text = "\n".join(texts) if texts else None
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise MalformedMessage(f"mixed text is longer than {MAX_TEXT_CHARS} characters")
    return text, tuple(urls)


def parse_callback(data: dict[str, Any]) -> Callback:
    """Validate a decrypted callback and turn it into a typed message, refresh or event.

    Unknown message types become an InboundMessage with text None (the caller decides how to
    answer); events without a chattype are taken as 1:1, since enter_chat only happens there.
    """
    if not isinstance(data, dict):
        raise MalformedMessage("callback must be a JSON object")
    msgid = _required(data, "msgid", "msgid", max_chars=MAX_MSGID_CHARS)
    msgtype = _required(data, "msgtype", "msgtype", max_chars=64)
    userid = _required(
        _object(data, "from", "from"), "userid", "from.userid", max_chars=MAX_USERID_CHARS
    )
    aibotid = _optional(data, "aibotid", "aibotid") or ""
    chatid = _optional(data, "chatid", "chatid", max_chars=MAX_CHATID_CHARS)

    if msgtype == "event":
        event = _object(data, "event", "event")
        eventtype = _required(event, "eventtype", "event.eventtype", max_chars=64)
        return InboundEvent(
            msgid=msgid,
            aibotid=aibotid,
            chatid=chatid,
            chattype=_chattype(data, default="single"),
            userid=userid,
            eventtype=eventtype,
            event=event,
            raw=data,
        )

    chattype = _chattype(data, default=None)
    if msgtype == "stream":
        stream_id = _required(_object(data, "stream", "stream"), "id", "stream.id")
        return StreamRefresh(
            msgid=msgid,
            aibotid=aibotid,
            chatid=chatid,
            chattype=chattype,
            userid=userid,
            stream_id=stream_id,
            raw=data,
        )

    text: str | None = None
    image_urls: tuple[str, ...] = ()
    if msgtype == "text":
        text = _text_content(data, "text")
    elif msgtype == "voice":
        text = _text_content(data, "voice")
    elif msgtype == "mixed":
        text, image_urls = _mixed(data)
    elif msgtype == "image":
        url = _image_url(data, "image")
        image_urls = (url,) if url else ()
    return InboundMessage(
        msgid=msgid,
        aibotid=aibotid,
        chatid=chatid,
        chattype=chattype,
        userid=userid,
        response_url=_optional(data, "response_url", "response_url", max_chars=MAX_URL_CHARS),
        msgtype=msgtype,
        text=text,
        image_urls=image_urls,
        quote=_object(data, "quote", "quote", required=False),
        raw=data,
    )


@dataclass(frozen=True, slots=True)
class FileAttachment:
    """A file an employee sent (1:1 only): a URL valid five minutes and how to decrypt it.

    `aeskey` is the message's own key on the long connection; callback-mode files carry
    none and are encrypted with the bot's EncodingAESKey (same AES scheme). WeCom sends no
    file name in every version of the payload, so `filename` may be empty.
    """

    url: str = field(repr=False)
    aeskey: str = field(repr=False)
    filename: str


def file_attachment(message: InboundMessage) -> FileAttachment | None:
    """The message's file, or None when it is not a file message or names no URL."""
    if message.msgtype != "file":
        return None
    item = message.raw.get("file")
    if not isinstance(item, dict):
        return None
    url = _optional(item, "url", "file.url", max_chars=MAX_URL_CHARS)
    if not url:
        return None
    aeskey = _optional(item, "aeskey", "file.aeskey") or ""
    filename = _optional(item, "filename", "file.filename", max_chars=255) or ""
    return FileAttachment(url=url, aeskey=aeskey, filename=filename)


# -- mentions -------------------------------------------------------------------------------

# A mention is "@" followed by non-space characters, at the start of the text or right after
# whitespace (so "a@b.com" is left alone). Python's \s covers U+2005 and U+3000, which WeCom
# puts after a mention. A name also ends at CJK punctuation ("@机器人，你好"); the horizontal
# whitespace and separator commas/colons after a mention go with it.
_MENTION = re.compile(r"(?:^|(?<=\s))@[^\s，。！？：；、]+(?:[^\S\n]|[，：、])*")


def strip_mention(text: str) -> str:
    """Remove every @-mention (WeCom keeps "@RobotA hello" inline) and trim the result.

    Rule: a mention is `@` plus the non-space characters after it (stopping at CJK punctuation),
    at the start of the text or after whitespace. All mentions go, other people's included,
    since they carry no question. A bot name containing spaces cannot be recognised this way.
    """
    return _MENTION.sub("", text).strip()


# -- replies --------------------------------------------------------------------------------


def _check_size(content: str, what: str) -> None:
    size = len(content.encode("utf-8"))
    if size > MAX_CONTENT_BYTES:
        raise ValueError(
            f"{what} is {size} bytes; WeCom accepts at most {MAX_CONTENT_BYTES}. "
            "Split it with split_at_boundary instead of letting WeCom truncate it."
        )


def stream_reply(
    *, stream_id: str, content: str = "", finish: bool = False, feedback_id: str | None = None
) -> dict[str, Any]:
    """A stream answer: `content` is the whole answer so far, replacing what was shown."""
    if not stream_id:
        raise ValueError("stream_id must not be empty")
    _check_size(content, "stream content")
    stream: dict[str, Any] = {"id": stream_id, "finish": finish, "content": content}
    if feedback_id is not None:
        stream["feedback"] = {"id": feedback_id}
    return {"msgtype": "stream", "stream": stream}


def text_reply(content: str) -> dict[str, Any]:
    """A plain text passive reply, e.g. the welcome text for enter_chat."""
    _check_size(content, "text content")
    return {"msgtype": "text", "text": {"content": content}}


def markdown_payload(content: str) -> dict[str, Any]:
    """The body for a one-shot response_url POST."""
    _check_size(content, "markdown content")
    return {"msgtype": "markdown", "markdown": {"content": content}}


# -- reasoning blocks -----------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>(.*?)(?:</think>|\Z)", re.DOTALL)


def split_think(content: str) -> tuple[str | None, str]:
    """Separate `<think>…</think>` reasoning from the answer WeCom shows below it.

    Returns (reasoning or None, answer). An unclosed block (the model is still thinking)
    counts as reasoning up to the end of the text.
    """
    blocks = [match.group(1).strip() for match in _THINK_BLOCK.finditer(content)]
    if not blocks:
        return None, content.strip()
    return "\n".join(blocks), _THINK_BLOCK.sub("", content).strip()


# -- splitting long answers -----------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")
_CJK_SENTENCE_END = "。！？；"
_LATIN_SENTENCE_END = ".!?"
_CLOSERS = "\"')]}”’」』）】》"
# A boundary earlier than this share of the window would give needlessly small pieces, so
# the next weaker boundary kind is tried instead.
_MIN_HEAD_SHARE = 0.5


def _utf8_len(char: str) -> int:
    code = ord(char)
    if code < 0x80:
        return 1
    if code < 0x800:
        return 2
    if code < 0x10000:
        return 3
    return 4


def _sentence_cut(window: str, text: str, floor: int) -> int | None:
    """Index just after the last sentence end in window, or None if none leaves floor chars."""
    for index in range(len(window) - 1, floor - 2, -1):
        char = window[index]
        if char in _CJK_SENTENCE_END:
            cut = index + 1
        elif char in _LATIN_SENTENCE_END:
            # "3.14" or "e.g.x" is not a sentence end: require whitespace (or the end) after.
            following = text[index + 1 : index + 2]
            if following and not following.isspace():
                continue
            cut = index + 1
        else:
            continue
        while cut < len(window) and window[cut] in _CLOSERS:
            cut += 1
        return cut
    return None


def _outside_think_tags(text: str, cut: int) -> int:
    """Move cut back to the start of a <think>/</think> marker it would fall inside."""
    for tag in (THINK_OPEN, THINK_CLOSE):
        start = text.find(tag, max(0, cut - len(tag) + 1), cut + len(tag) - 1)
        if start != -1 and start < cut < start + len(tag):
            return start
    return cut


def split_at_boundary(text: str, limit_bytes: int) -> tuple[str, str]:
    """Split text into (head, rest) with head at most limit_bytes of UTF-8 and head + rest == text.

    The cut goes after the last paragraph break, else line break, else sentence end
    (。！？； or .!? followed by whitespace), else whitespace, else at a character boundary.
    Boundaries in the first half of the window are skipped in favour of the next kind, and
    the cut never lands inside a `<think>`/`</think>` marker (a reasoning block itself may be
    split: callers that care must close and reopen it).
    """
    if limit_bytes < len(THINK_CLOSE):
        raise ValueError(f"limit_bytes must be at least {len(THINK_CLOSE)}")
    total = 0
    max_chars = len(text)
    min_chars = 0
    for index, char in enumerate(text):
        total += _utf8_len(char)
        if not min_chars and total >= limit_bytes * _MIN_HEAD_SHARE:
            min_chars = index + 1
        if total > limit_bytes:
            max_chars = index
            break
    else:
        return text, ""

    window = text[:max_chars]
    floor = max(min(min_chars, max_chars), 1)
    cut: int | None = None
    paragraph_ends = [m.end() for m in _PARAGRAPH_BREAK.finditer(window) if m.end() >= floor]
    if paragraph_ends:
        cut = paragraph_ends[-1]
    if cut is None and window.rfind("\n") + 1 >= floor:
        cut = window.rfind("\n") + 1
    if cut is None:
        cut = _sentence_cut(window, text, floor)
    if cut is None:
        cut = next(
            (i + 1 for i in range(len(window) - 1, floor - 2, -1) if window[i].isspace()), None
        )
    if cut is None:
        cut = _outside_think_tags(text, max_chars)
    return text[:cut], text[cut:]

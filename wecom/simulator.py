"""WeCom's side of the AI-bot callback protocol, for tests, benchmarks and demos on loopback.

`WeComSimulator` encrypts, signs and POSTs callbacks exactly as WeCom does (URL check,
messages, stream refreshes with a fresh msgid each) and verifies the bot's encrypted replies.
`ResponseUrlServer` plays the one-shot response_url endpoint.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from wecom.crypto import WeComCrypto
from wecom.loopback import LoopbackServer
from wecom.messages import MAX_CONTENT_BYTES, split_think

RESPONSE_URL_PATH = "/cgi-bin/aibot/response"
# The simulator's own codes. WeCom documents that a response_url works once, but not which
# errcode a reuse or a bad payload gets: rely only on "non-zero", never on these values.
RESPONSE_URL_USED_ERRCODE = 600100
INVALID_MSGTYPE_ERRCODE = 40008
CONTENT_TOO_LONG_ERRCODE = 45002
_MAX_POST_BYTES = 1024 * 1024


class SimulatorError(Exception):
    """The bot under test broke the protocol (wrong status, echo, nonce or reply shape)."""


# -- response_url endpoint ------------------------------------------------------------------


class _ResponseUrlHandler(BaseHTTPRequestHandler):
    server: ResponseUrlServer

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean; the recorded posts are the log."""

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        keys = parse_qs(parts.query).get("response_code", [])
        if parts.path != RESPONSE_URL_PATH or len(keys) != 1:
            self._answer(HTTPStatus.NOT_FOUND, {"errcode": 404, "errmsg": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_POST_BYTES:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"errcode": 413, "errmsg": "big"})
            return
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self._answer(HTTPStatus.BAD_REQUEST, {"errcode": 40000, "errmsg": "invalid json"})
            return
        self._answer(HTTPStatus.OK, self.server.record(keys[0], body))


def _payload_errcode(body: dict[str, Any]) -> int:
    """0 for a payload WeCom would show, else the errcode it would answer with."""
    msgtype = body.get("msgtype")
    if msgtype == "markdown":
        markdown = body.get("markdown")
        content = markdown.get("content") if isinstance(markdown, dict) else None
        if not isinstance(content, str):
            return INVALID_MSGTYPE_ERRCODE
        if len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
            return CONTENT_TOO_LONG_ERRCODE
        return 0
    if msgtype == "template_card" and isinstance(body.get("template_card"), dict):
        return 0
    return INVALID_MSGTYPE_ERRCODE


class ResponseUrlServer(LoopbackServer):
    """A loopback response_url endpoint: records every POST per key, accepts only the first.

    Use as a context manager; `url_for(key)` gives a URL shaped like WeCom's
    (`…/cgi-bin/aibot/response?response_code=KEY`).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._posts: dict[str, list[dict[str, Any]]] = {}
        self._used: set[str] = set()
        self._changed = threading.Condition()
        super().__init__(_ResponseUrlHandler, host=host, port=port)

    def url_for(self, key: str) -> str:
        """The response_url to hand the bot for one message (usually keyed by its msgid)."""
        return f"{self.base_url}{RESPONSE_URL_PATH}?response_code={quote(key, safe='')}"

    def record(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store a POSTed body and return WeCom's answer to it (called by the HTTP handler)."""
        with self._changed:
            self._posts.setdefault(key, []).append(body)
            self._changed.notify_all()
            if key in self._used:
                return {"errcode": RESPONSE_URL_USED_ERRCODE, "errmsg": "response_url already used"}
            errcode = _payload_errcode(body)
            if errcode:
                return {"errcode": errcode, "errmsg": "invalid message"}
            self._used.add(key)
            return {"errcode": 0, "errmsg": "ok"}

    def posts(self, key: str) -> list[dict[str, Any]]:
        """Every body POSTed for key, rejected ones included, oldest first."""
        with self._changed:
            return list(self._posts.get(key, []))

    def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        """Block until something was POSTed for key and return the first body."""
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._posts.get(key)), timeout):
                raise TimeoutError(f"nothing was POSTed to the response_url within {timeout}s")
            return self._posts[key][0]


# -- the WeCom side of the callback ---------------------------------------------------------


@dataclass
class AskResult:
    """What one simulated question produced, with the timings a user would feel."""

    msgid: str
    stream_id: str
    content: str
    answer: str
    think: str | None
    refreshes: int
    ack_seconds: float
    first_content_seconds: float | None
    total_seconds: float
    response_url_post: dict[str, Any] | None
    finished: bool
    snapshots: list[str] = field(default_factory=list)

    @property
    def raw_content(self) -> str:
        """The final stream content exactly as received (`<think>` block included)."""
        return self.content


def _nonce() -> str:
    return str(secrets.randbelow(9_000_000_000) + 1_000_000_000)


def _timestamp() -> str:
    return str(int(time.time()))


class WeComSimulator:
    """Plays WeCom against a bot's callback URL, speaking the real encrypted protocol."""

    def __init__(
        self,
        *,
        callback_url: str,
        token: str,
        encoding_aes_key: str,
        aibotid: str = "sim-bot",
        client: httpx.Client | None = None,
        response_server: ResponseUrlServer | None = None,
        refresh_interval: float = 0.3,
        bot_name: str = "RobotA",
    ) -> None:
        self.callback_url = callback_url
        self.aibotid = aibotid
        self.bot_name = bot_name
        self.response_server = response_server
        self.refresh_interval = refresh_interval
        # The AI bot's receiveid is always the empty string.
        self._crypto = WeComCrypto(token=token, encoding_aes_key=encoding_aes_key, receive_id="")
        self._own_client = client is None
        # trust_env=False: a proxy from the environment must never intercept loopback traffic.
        self._client = client if client is not None else httpx.Client(timeout=30.0, trust_env=False)

    def close(self) -> None:
        """Close the HTTP client if this simulator created it."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport --------------------------------------------------------------------------

    def verify_url(self) -> str:
        """Do WeCom's URL check and return the bot's answer; it must be the bare echo text."""
        echo = str(secrets.randbelow(10**19))
        echostr = self._crypto.encrypt(echo.encode("ascii"))
        timestamp, nonce = _timestamp(), _nonce()
        response = self._client.get(
            self.callback_url,
            params={
                "msg_signature": self._crypto.signature(timestamp, nonce, echostr),
                "timestamp": timestamp,
                "nonce": nonce,
                "echostr": echostr,
            },
        )
        if response.status_code != HTTPStatus.OK:
            raise SimulatorError(f"URL verification answered HTTP {response.status_code}")
        if response.text != echo:
            raise SimulatorError(
                f"URL verification answered {response.text!r}, expected the bare echo {echo!r}"
            )
        return response.text

    def post_message(
        self, data: dict[str, Any], *, timestamp: str | None = None, nonce: str | None = None
    ) -> httpx.Response:
        """Encrypt, sign and POST one callback; the nonce is in the request's query string.

        `timestamp` and `nonce` default to now and a fresh random one, as WeCom sends them;
        tests pass their own to play a captured or stale callback again.
        """
        plaintext = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        encrypt = self._crypto.encrypt(plaintext)
        timestamp = timestamp if timestamp is not None else _timestamp()
        nonce = nonce if nonce is not None else _nonce()
        return self._client.post(
            self.callback_url,
            params={
                "msg_signature": self._crypto.signature(timestamp, nonce, encrypt),
                "timestamp": timestamp,
                "nonce": nonce,
            },
            json={"encrypt": encrypt},
        )

    def decrypt_reply(
        self, response: httpx.Response, nonce: str | None = None
    ) -> dict[str, Any] | None:
        """Verify and decrypt the bot's passive reply; None for an empty 200.

        nonce defaults to the one the callback was sent with, which the reply must echo.
        Raises SignatureError for a bad reply signature, SimulatorError for anything else.
        """
        if response.status_code != HTTPStatus.OK:
            raise SimulatorError(f"callback answered HTTP {response.status_code}")
        if not response.content.strip():
            return None
        try:
            body = response.json()
        except ValueError:
            raise SimulatorError("reply is neither empty nor JSON") from None
        if not isinstance(body, dict):
            raise SimulatorError("reply JSON is not an object")
        fields: dict[str, str] = {}
        for name in ("encrypt", "msgsignature", "timestamp", "nonce"):
            value = body.get(name)
            if isinstance(value, int) and name == "timestamp":
                value = str(value)
            if not isinstance(value, str) or not value:
                raise SimulatorError(f"reply lacks {name!r}")
            fields[name] = value
        expected_nonce = nonce if nonce is not None else response.request.url.params.get("nonce")
        if fields["nonce"] != expected_nonce:
            raise SimulatorError("reply nonce does not echo the callback's nonce")
        self._crypto.check_signature(
            fields["msgsignature"], fields["timestamp"], fields["nonce"], fields["encrypt"]
        )
        payload = json.loads(self._crypto.decrypt(fields["encrypt"]))
        if not isinstance(payload, dict):
            raise SimulatorError("decrypted reply is not a JSON object")
        return payload

    # -- callback builders ------------------------------------------------------------------

    def _base(
        self,
        msgtype: str,
        *,
        userid: str,
        chatid: str | None,
        msgid: str | None,
        with_response_url: bool,
    ) -> dict[str, Any]:
        msgid = msgid or uuid.uuid4().hex
        data: dict[str, Any] = {
            "msgid": msgid,
            "create_time": int(time.time()),
            "aibotid": self.aibotid,
            "chattype": "group" if chatid else "single",
            "from": {"userid": userid},
            "msgtype": msgtype,
        }
        if chatid:
            data["chatid"] = chatid
        if with_response_url and self.response_server is not None:
            data["response_url"] = self.response_server.url_for(msgid)
        return data

    def _mention(self, text: str, chatid: str | None, mention: bool | None) -> str:
        # In a group WeCom only delivers messages that @-mention the bot, mention inline.
        if mention is None:
            mention = bool(chatid) and not text.startswith("@")
        return f"@{self.bot_name} {text}" if mention else text

    def text_message(
        self,
        text: str,
        *,
        userid: str,
        chatid: str | None = None,
        msgid: str | None = None,
        mention: bool | None = None,
    ) -> dict[str, Any]:
        """A text callback; in a group the bot's @-mention is prefixed unless mention=False."""
        data = self._base("text", userid=userid, chatid=chatid, msgid=msgid, with_response_url=True)
        data["text"] = {"content": self._mention(text, chatid, mention)}
        return data

    def mixed_message(
        self,
        items: Sequence[tuple[Literal["text", "image"], str]],
        *,
        userid: str,
        chatid: str | None = None,
        msgid: str | None = None,
    ) -> dict[str, Any]:
        """A mixed text-and-image callback; items are ("text", content) or ("image", url)."""
        data = self._base(
            "mixed", userid=userid, chatid=chatid, msgid=msgid, with_response_url=True
        )
        msg_item: list[dict[str, Any]] = []
        for kind, value in items:
            if kind == "text":
                msg_item.append({"msgtype": "text", "text": {"content": value}})
            else:
                msg_item.append({"msgtype": "image", "image": {"url": value}})
        data["mixed"] = {"msg_item": msg_item}
        return data

    def voice_message(
        self, text: str, *, userid: str, chatid: str | None = None, msgid: str | None = None
    ) -> dict[str, Any]:
        """A voice callback; WeCom has already turned the speech into text."""
        data = self._base(
            "voice", userid=userid, chatid=chatid, msgid=msgid, with_response_url=True
        )
        data["voice"] = {"content": text}
        return data

    def image_message(self, url: str, *, userid: str, msgid: str | None = None) -> dict[str, Any]:
        """An image callback; WeCom sends these only in 1:1 chats."""
        data = self._base("image", userid=userid, chatid=None, msgid=msgid, with_response_url=True)
        data["image"] = {"url": url}
        return data

    def file_message(
        self, url: str, *, userid: str, filename: str | None = None, msgid: str | None = None
    ) -> dict[str, Any]:
        """A file callback (1:1 only): the URL serves the file encrypted with the bot's
        EncodingAESKey, valid five minutes (`LongConnSimulator.serve_media` plays that host)."""
        data = self._base("file", userid=userid, chatid=None, msgid=msgid, with_response_url=True)
        data["file"] = {"url": url} | ({"filename": filename} if filename else {})
        return data

    def event_message(
        self,
        eventtype: str,
        *,
        userid: str,
        event: dict[str, Any] | None = None,
        chatid: str | None = None,
    ) -> dict[str, Any]:
        """An event callback; `event` holds the extra fields, e.g. {"feedback_event": {...}}."""
        data = self._base(
            "event", userid=userid, chatid=chatid, msgid=None, with_response_url=False
        )
        data["event"] = {"eventtype": eventtype, **(event or {})}
        return data

    def stream_refresh_message(
        self, stream_id: str, *, userid: str, chatid: str | None = None
    ) -> dict[str, Any]:
        """A stream refresh callback; like WeCom, each one carries its own new msgid."""
        data = self._base(
            "stream", userid=userid, chatid=chatid, msgid=None, with_response_url=False
        )
        data["stream"] = {"id": stream_id}
        return data

    # -- a whole exchange -------------------------------------------------------------------

    def ask(
        self,
        text: str,
        *,
        userid: str = "zhangsan",
        chatid: str | None = None,
        timeout: float = 120.0,
        msgid: str | None = None,
        response_wait: float = 0.0,
    ) -> AskResult:
        """Send a question and poll the stream like WeCom until it finishes or timeout passes.

        response_wait is how long to wait after the stream ends for a response_url POST that
        has not arrived yet; 0 only collects one that already did.
        """
        message = self.text_message(text, userid=userid, chatid=chatid, msgid=msgid)
        msgid = message["msgid"]
        started = time.monotonic()
        response = self.post_message(message)
        ack_seconds = time.monotonic() - started
        stream = self._stream_of(self.decrypt_reply(response))
        stream_id = stream.get("id")
        if not isinstance(stream_id, str) or not stream_id:
            raise SimulatorError("the first stream reply has no stream id")

        snapshots: list[str] = []
        first_content_seconds: float | None = None
        refreshes = 0
        content = ""
        finished = False
        while True:
            content = stream.get("content") or ""
            if not isinstance(content, str):
                raise SimulatorError("stream content is not a string")
            if content and first_content_seconds is None:
                first_content_seconds = time.monotonic() - started
            if content and (not snapshots or snapshots[-1] != content):
                snapshots.append(content)
            finished = stream.get("finish") is True
            if finished or time.monotonic() - started + self.refresh_interval > timeout:
                break
            time.sleep(self.refresh_interval)
            refresh = self.stream_refresh_message(stream_id, userid=userid, chatid=chatid)
            refreshes += 1
            reply = self.decrypt_reply(self.post_message(refresh))
            if reply is None:
                continue  # an empty 200 is a valid answer; WeCom simply asks again later
            stream = self._stream_of(reply)
            if stream.get("id") != stream_id:
                raise SimulatorError("a refresh was answered for a different stream id")
        total_seconds = time.monotonic() - started

        think, answer = split_think(content)
        return AskResult(
            msgid=msgid,
            stream_id=stream_id,
            content=content,
            answer=answer,
            think=think,
            refreshes=refreshes,
            ack_seconds=ack_seconds,
            first_content_seconds=first_content_seconds,
            total_seconds=total_seconds,
            response_url_post=self._response_url_post(msgid, response_wait),
            finished=finished,
            snapshots=snapshots,
        )

    @staticmethod
    def _stream_of(reply: dict[str, Any] | None) -> dict[str, Any]:
        if reply is None or reply.get("msgtype") != "stream":
            kind = "an empty reply" if reply is None else repr(reply.get("msgtype"))
            raise SimulatorError(f"expected a stream reply, got {kind}")
        stream = reply.get("stream")
        if not isinstance(stream, dict):
            raise SimulatorError("stream reply lacks the stream object")
        return stream

    def _response_url_post(self, msgid: str, wait: float) -> dict[str, Any] | None:
        if self.response_server is None:
            return None
        posts = self.response_server.posts(msgid)
        if posts or wait <= 0:
            return posts[0] if posts else None
        try:
            return self.response_server.wait_for(msgid, wait)
        except TimeoutError:
            return None

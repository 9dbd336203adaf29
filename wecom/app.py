"""WeCom self-built app (自建应用): XML callbacks in, `message/send` and `appchat/send` out.

Callbacks use the AI bot's crypto with receiveid = the CorpID, inside an XML envelope
(`<xml><ToUserName/><AgentID/><Encrypt/></xml>`) whose plaintext is XML again. There is no
stream: the callback is acknowledged empty at once and the answer is sent later through the
send API, split into numbered parts that each fit WeCom's byte limit (protocol doc §3).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any
from xml.parsers.expat import ExpatError

import httpx
import xmltodict

from wecom.crypto import WeComCrypto, WeComCryptoError
from wecom.messages import MalformedMessage, split_at_boundary
from wecom.tokens import AccessTokens, TokenError, TokenStore

logger = logging.getLogger(__name__)

GETTOKEN_PATH = "/cgi-bin/gettoken"
MESSAGE_SEND_PATH = "/cgi-bin/message/send"
APPCHAT_SEND_PATH = "/cgi-bin/appchat/send"

# message/send limits: text content 2,048 bytes, markdown 4,096.
TEXT_MAX_BYTES = 2048
MARKDOWN_MAX_BYTES = 4096
# Room kept in each part for its "(12/34) " number.
PART_NUMBER_RESERVE = 16

# WeCom's errcodes the app path meets (developer.work.weixin.qq.com/document/path/90313).
BUSY = -1
INVALID_CREDENTIAL = 40001
INVALID_CORPID = 40013
INVALID_TOKEN = 40014
INVALID_AGENTID = 40056
TOKEN_EXPIRED = 42001
EMPTY_CONTENT = 44004
CONTENT_TOO_LONG = 45002
RATE_LIMITED = 45009
CONCURRENCY_LIMITED = 45033
IP_NOT_TRUSTED = 60020
INVALID_USER = 81013
CHAT_NOT_FOUND = 86003
# Worth another try later: the platform is busy or throttling (and our own network).
RETRYABLE_ERRCODES = frozenset({BUSY, RATE_LIMITED, CONCURRENCY_LIMITED})

# XML envelope and plaintext bodies are a few KB; refuse anything much larger unparsed.
MAX_XML_BYTES = 64 * 1024


class AppApiError(Exception):
    """WeCom refused a call (`errcode`), or it never got there (`errcode` None)."""

    def __init__(self, errcode: int | None, errmsg: str) -> None:
        super().__init__(f"{'network' if errcode is None else errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg

    @property
    def retryable(self) -> bool:
        return self.errcode is None or self.errcode in RETRYABLE_ERRCODES


# -- callbacks ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppCallback:
    """One decrypted callback: a message (`msgid` set) or an event (`event` set)."""

    to_user: str  # the CorpID
    from_user: str  # the sender's userid ("" for 微信客服's event)
    agent_id: str
    msgtype: str
    create_time: str
    msgid: str = ""
    content: str | None = None
    event: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def dedup_key(self) -> str:
        """WeCom retries with the same MsgId; events have none, so sender and time stand in."""
        if self.msgid:
            return self.msgid
        if self.kf_token:
            return f"kf-event:{self.kf_token}"
        return f"event:{self.from_user}:{self.create_time}:{self.event}"

    @property
    def kf_token(self) -> str:
        """微信客服's event carries a token for pulling the messages it announces."""
        token = self.raw.get("Token") if self.event == "kf_msg_or_event" else None
        return token if isinstance(token, str) else ""

    @property
    def open_kfid(self) -> str:
        value = self.raw.get("OpenKfId")
        return value if isinstance(value, str) else ""


def xml_parse(body: bytes | str) -> dict[str, Any]:
    """The `<xml>` element as a flat dict; MalformedMessage for anything else.

    xmltodict refuses entity declarations (no billion laughs, no external entities).
    """
    if len(body) > MAX_XML_BYTES:
        raise MalformedMessage("XML body too large")
    try:
        document = xmltodict.parse(body, disable_entities=True)
    except (ExpatError, ValueError) as exc:
        raise MalformedMessage(f"not XML: {exc}") from None
    root = document.get("xml") if isinstance(document, dict) else None
    if not isinstance(root, dict):
        raise MalformedMessage("no <xml> root element")
    return dict(root)


def callback_decrypt(
    crypto: WeComCrypto, *, msg_signature: str, timestamp: str, nonce: str, body: bytes
) -> dict[str, Any]:
    """Authenticate and decrypt a POSTed XML envelope into the inner message's fields.

    An envelope that is not XML or has no `Encrypt` is a WeComCryptoError like any other
    undecryptable body, so the view answers all of them with the same 400.
    """
    try:
        envelope = xml_parse(body)
    except MalformedMessage:
        raise WeComCryptoError() from None
    encrypt = envelope.get("Encrypt")
    if not isinstance(encrypt, str) or not encrypt:
        raise WeComCryptoError()
    crypto.check_signature(msg_signature, timestamp, nonce, encrypt)
    plaintext = crypto.decrypt(encrypt)
    try:
        return xml_parse(plaintext)
    except MalformedMessage:
        raise WeComCryptoError() from None


def callback_parse(data: dict[str, Any]) -> AppCallback:
    """The fields WeCom documents for app messages and events; MalformedMessage if missing."""

    def text(name: str) -> str:
        value = data.get(name)
        return value.strip() if isinstance(value, str) else ""

    msgtype = text("MsgType").lower()
    from_user = text("FromUserName")
    if not msgtype:
        raise MalformedMessage("MsgType is required")
    if msgtype == "event":
        event = text("Event")
        if not event:
            raise MalformedMessage("an event without Event")
        if event == "kf_msg_or_event" and not (text("Token") and text("OpenKfId")):
            raise MalformedMessage("a kf_msg_or_event without Token or OpenKfId")
        return AppCallback(
            to_user=text("ToUserName"),
            from_user=from_user,
            agent_id=text("AgentID"),
            msgtype=msgtype,
            create_time=text("CreateTime"),
            event=event,
            raw=data,
        )
    msgid = text("MsgId")
    if not msgid or not from_user:
        raise MalformedMessage("a message without MsgId or FromUserName")
    content: str | None = None
    if msgtype == "text":
        raw_content = data.get("Content")
        content = raw_content if isinstance(raw_content, str) else ""
    elif msgtype == "voice" and text("Recognition"):
        content = text("Recognition")  # WeCom's speech recognition, when switched on
    return AppCallback(
        to_user=text("ToUserName"),
        from_user=from_user,
        agent_id=text("AgentID"),
        msgtype=msgtype,
        create_time=text("CreateTime"),
        msgid=msgid,
        content=content,
        raw=data,
    )


# -- outgoing text -----------------------------------------------------------------------


def message_parts(text: str, *, limit_bytes: int) -> list[str]:
    """Split an answer into parts of at most `limit_bytes` UTF-8 bytes, numbered "(1/3) ".

    Cuts fall at paragraph, line or sentence ends where possible and never inside a
    character; the parts without their numbers join back to the text.
    """
    if len(text.encode("utf-8")) <= limit_bytes:
        return [text]
    pieces: list[str] = []
    rest = text
    while rest:
        head, rest = split_at_boundary(rest, limit_bytes - PART_NUMBER_RESERVE)
        pieces.append(head)
    total = len(pieces)
    return [f"({index}/{total}) {piece}" for index, piece in enumerate(pieces, start=1)]


def part_number_strip(part: str) -> str:
    """The part's text without its "(i/n) " number (what a reader joins back)."""
    if part.startswith("(") and ") " in part[:PART_NUMBER_RESERVE]:
        return part.split(") ", 1)[1]
    return part


# -- the send API ------------------------------------------------------------------------


class AppClient:
    """`gettoken`, `message/send` and `appchat/send` for one app (corp id + secret + agent).

    The token lives in `store` (shared by every process in the product) and is refreshed
    once when WeCom calls it invalid or expired; the call is then made again once.
    """

    def __init__(
        self,
        *,
        base_url: str,
        corp_id: str,
        secret: str,
        agent_id: int,
        store: TokenStore,
        http: httpx.Client | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.corp_id = corp_id
        self.agent_id = agent_id
        self._secret = secret
        self._http = http or httpx.Client(timeout=timeout, trust_env=False)
        secret_hash = hashlib.sha256(secret.encode()).hexdigest()[:16]
        self.tokens = AccessTokens(
            store=store, key=f"wecom-app:{corp_id}:{secret_hash}", fetch=self._token_fetch
        )

    def __repr__(self) -> str:
        return f"AppClient(corp_id={self.corp_id!r}, agent_id={self.agent_id})"

    def close(self) -> None:
        self._http.close()

    def message_send(self, *, touser: str, content: str, markdown: bool = False) -> dict[str, Any]:
        """Send to one member (or "a|b|c"); a refused recipient is an INVALID_USER error."""
        body = self._message(content, markdown=markdown)
        reply = self.post(MESSAGE_SEND_PATH, {"touser": touser, "agentid": self.agent_id, **body})
        invalid = str(reply.get("invaliduser") or "")
        # errcode 0 with every named recipient refused: nobody got it.
        if invalid and set(invalid.split("|")) >= set(touser.split("|")):
            raise AppApiError(INVALID_USER, f"invalid user {invalid}")
        return reply

    def appchat_send(self, *, chatid: str, content: str, markdown: bool = False) -> dict[str, Any]:
        """Send to a group chat the app created (apps cannot receive group messages)."""
        return self.post(APPCHAT_SEND_PATH, {"chatid": chatid, **self._message(content, markdown)})

    @staticmethod
    def _message(content: str, markdown: bool) -> dict[str, Any]:
        msgtype = "markdown" if markdown else "text"
        return {"msgtype": msgtype, msgtype: {"content": content}}

    def _token_fetch(self) -> tuple[str, int]:
        params = {"corpid": self.corp_id, "corpsecret": self._secret}
        try:
            data = self._json(self._http.get(self.base_url + GETTOKEN_PATH, params=params))
        except AppApiError as exc:
            raise TokenError(exc.errcode, exc.errmsg) from None
        if int(data.get("errcode") or 0) != 0:
            raise TokenError(int(data["errcode"]), str(data.get("errmsg", "")))
        return str(data.get("access_token") or ""), int(data.get("expires_in") or 7200)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` with the token; WeCom's refusal is an AppApiError."""

        def request(token: str) -> dict[str, Any]:
            response = self._http.post(
                self.base_url + path, params={"access_token": token}, json=body
            )
            return self._json(response)

        try:
            reply = self.tokens.call(request)
        except TokenError as exc:
            raise AppApiError(exc.errcode, exc.errmsg) from None
        except httpx.HTTPError as exc:
            raise AppApiError(None, f"{type(exc).__name__}: {exc}") from None
        errcode = int(reply.get("errcode") or 0)
        if errcode != 0:
            raise AppApiError(errcode, str(reply.get("errmsg", "")))
        return reply

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise AppApiError(None, f"HTTP {response.status_code} was not JSON") from None
        if not isinstance(data, dict):
            raise AppApiError(None, f"HTTP {response.status_code} was not a JSON object")
        return data

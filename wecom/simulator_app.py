"""WeCom's self-built-app side on loopback: the send API with real error codes, and callbacks.

`AppApiServer` answers `gettoken`, `message/send` and `appchat/send` the way WeCom does
(expired or unknown tokens, rate limits, invalid users, content over the byte limit) and
records what each member or chat received. `AppCallbackBuilder` makes the encrypted XML
callbacks WeCom POSTs, with wechatpy's enterprise crypto (receiveid = the CorpID), an
implementation independent of the product's own `wecom.crypto`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import httpx
import xmltodict
from wechatpy.crypto import _get_signature
from wechatpy.enterprise.crypto import PrpCrypto, WeChatCrypto

from wecom.app import (
    APPCHAT_SEND_PATH,
    CHAT_NOT_FOUND,
    CONTENT_TOO_LONG,
    EMPTY_CONTENT,
    GETTOKEN_PATH,
    INVALID_AGENTID,
    INVALID_CORPID,
    INVALID_CREDENTIAL,
    INVALID_TOKEN,
    INVALID_USER,
    MARKDOWN_MAX_BYTES,
    MESSAGE_SEND_PATH,
    TEXT_MAX_BYTES,
    TOKEN_EXPIRED,
)
from wecom.loopback import LoopbackServer
from wecom.simulator_kf import PATHS as KF_PATHS
from wecom.simulator_kf import KfDesk

TOKEN_LIFETIME_SECONDS = 7200


class AppApiServer(LoopbackServer):
    """One corp's app API. `sent` lists accepted sends in order (path + JSON body)."""

    def __init__(
        self,
        *,
        corp_id: str,
        secret: str,
        agent_id: int,
        users: set[str],
        chats: set[str] = frozenset(),  # type: ignore[assignment]
        open_kfids: set[str] = frozenset(),  # type: ignore[assignment]
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(_Handler, host=host, port=port)
        self.corp_id = corp_id
        self.secret = secret
        self.agent_id = agent_id
        self.users = set(users)
        self.chats = set(chats)
        self.kf = KfDesk(open_kfids=set(open_kfids))
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # token -> expiry on `clock`
        self._failures: list[_Failure] = []
        self.sent: list[dict[str, Any]] = []
        self.token_fetches = 0
        self.refusals: list[tuple[str, int]] = []
        # After this many more accepted sends every token expires (a token dying mid-run).
        self.tokens_expire_after: int | None = None

    # -- what tests steer and read ---------------------------------------------------------

    def tokens_expire(self) -> None:
        """Every token issued so far expires now (WeCom then answers 42001)."""
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = self.clock() - 1

    def fail_next(
        self, errcode: int, *, path: str | None = None, times: int = 1, after: int = 0
    ) -> None:
        """After `after` more sends (to `path`, or any), the next `times` get `errcode`."""
        with self._lock:
            self._failures.append(_Failure(path=path, errcode=errcode, times=times, skip=after))

    def contents(self, *, touser: str | None = None, chatid: str | None = None) -> list[str]:
        """The text of each message a member (or chat) received, in order."""
        result = []
        with self._lock:
            for entry in self.sent:
                body = entry["body"]
                if touser is not None and body.get("touser") != touser:
                    continue
                if chatid is not None and body.get("chatid") != chatid:
                    continue
                result.append(body[body["msgtype"]]["content"])
        return result

    # -- the API ---------------------------------------------------------------------------

    def gettoken(self, query: dict[str, str]) -> dict[str, Any]:
        if query.get("corpid") != self.corp_id:
            return _error(INVALID_CORPID, "invalid corpid")
        if query.get("corpsecret") != self.secret:
            return _error(INVALID_CREDENTIAL, "invalid credential")
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.token_fetches += 1
            self._tokens[token] = self.clock() + TOKEN_LIFETIME_SECONDS
        return {
            "errcode": 0,
            "errmsg": "ok",
            "access_token": token,
            "expires_in": TOKEN_LIFETIME_SECONDS,
        }

    def send(self, path: str, token: str, body: Any) -> dict[str, Any]:
        result = self._send(path, token, body)
        if result["errcode"]:
            with self._lock:
                self.refusals.append((path, result["errcode"]))
        return result

    def _refusal(self, path: str, token: str) -> dict[str, Any] | None:
        """A dead token, or a failure a test asked for; None when the call may proceed."""
        with self._lock:
            expiry = self._tokens.get(token)
            if expiry is None:
                return _error(INVALID_TOKEN, "invalid access_token")
            if expiry <= self.clock():
                return _error(TOKEN_EXPIRED, "access_token expired")
            failure = next((f for f in self._failures if f.path in (None, path)), None)
            if failure is not None and failure.skip > 0:
                failure.skip -= 1
            elif failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return _error(failure.errcode, "simulated failure")
        return None

    def _send(self, path: str, token: str, body: Any) -> dict[str, Any]:
        refusal = self._refusal(path, token)
        if refusal is not None:
            return refusal
        if path in KF_PATHS:
            return self.kf.call(path, body if isinstance(body, dict) else {})
        if not isinstance(body, dict) or body.get("msgtype") not in {"text", "markdown"}:
            return _error(40008, "invalid message type")
        content = (body.get(body["msgtype"]) or {}).get("content")
        if not isinstance(content, str) or not content:
            return _error(EMPTY_CONTENT, "empty content")
        limit = TEXT_MAX_BYTES if body["msgtype"] == "text" else MARKDOWN_MAX_BYTES
        if len(content.encode("utf-8")) > limit:
            return _error(CONTENT_TOO_LONG, "content size out of limit")
        reply: dict[str, Any] = {"errcode": 0, "errmsg": "ok"}
        if path == MESSAGE_SEND_PATH:
            if body.get("agentid") != self.agent_id:
                return _error(INVALID_AGENTID, "invalid agentid")
            named = [user for user in str(body.get("touser") or "").split("|") if user]
            invalid = [user for user in named if user not in self.users]
            if not named or len(invalid) == len(named):
                return _error(INVALID_USER, "all touser invalid or unauthorized")
            if invalid:
                reply["invaliduser"] = "|".join(invalid)
        elif body.get("chatid") not in self.chats:
            return _error(CHAT_NOT_FOUND, "chat not exist")
        with self._lock:
            self.sent.append({"path": path, "body": body})
            if self.tokens_expire_after is not None:
                self.tokens_expire_after -= 1
                if self.tokens_expire_after <= 0:
                    self.tokens_expire_after = None
                    for issued in self._tokens:
                        self._tokens[issued] = self.clock() - 1
        return reply


@dataclass
class _Failure:
    path: str | None
    errcode: int
    times: int
    skip: int


def _error(errcode: int, errmsg: str) -> dict[str, Any]:
    return {"errcode": errcode, "errmsg": errmsg}


class _Handler(BaseHTTPRequestHandler):
    server: AppApiServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _query(self) -> tuple[str, dict[str, str]]:
        url = urlsplit(self.path)
        return url.path, {key: values[0] for key, values in parse_qs(url.query).items()}

    def do_GET(self) -> None:
        path, query = self._query()
        if path != GETTOKEN_PATH:
            self.send_error(404)
            return
        self._reply(self.server.gettoken(query))

    def do_POST(self) -> None:
        path, query = self._query()
        if path not in {MESSAGE_SEND_PATH, APPCHAT_SEND_PATH} | KF_PATHS:
            self.send_error(404)
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            body = None
        self._reply(self.server.send(path, query.get("access_token", ""), body))


class AppCallbackBuilder:
    """Encrypted callbacks as WeCom POSTs them to an app's callback URL."""

    def __init__(self, *, token: str, encoding_aes_key: str, corp_id: str, agent_id: int) -> None:
        self.corp_id = corp_id
        self.agent_id = agent_id
        self._token = token
        self._crypto = WeChatCrypto(token, encoding_aes_key, corp_id)

    def text_xml(self, *, userid: str, content: str, msgid: str) -> str:
        return (
            f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>"
            f"<FromUserName><![CDATA[{userid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content>{escape(content)}</Content><MsgId>{msgid}</MsgId>"
            f"<AgentID>{self.agent_id}</AgentID></xml>"
        )

    def event_xml(self, *, userid: str, event: str) -> str:
        return (
            f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>"
            f"<FromUserName><![CDATA[{userid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[{event}]]></Event><AgentID>{self.agent_id}</AgentID></xml>"
        )

    def kf_event_xml(self, *, token: str, open_kfid: str) -> str:
        """微信客服's "something arrived" event: the messages are pulled with its token."""
        return (
            f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[kf_msg_or_event]]></Event><Token><![CDATA[{token}]]></Token>"
            f"<OpenKfId><![CDATA[{open_kfid}]]></OpenKfId></xml>"
        )

    def envelope(
        self, plain_xml: str, *, nonce: str | None = None, timestamp: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The POST body and its query (msg_signature, timestamp, nonce)."""
        nonce = nonce or secrets.token_hex(8)
        timestamp = timestamp or str(int(time.time()))
        signed = xmltodict.parse(self._crypto.encrypt_message(plain_xml, nonce, timestamp))["xml"]
        body = (
            f"<xml><ToUserName><![CDATA[{self.corp_id}]]></ToUserName>"
            f"<AgentID><![CDATA[{self.agent_id}]]></AgentID>"
            f"<Encrypt><![CDATA[{signed['Encrypt']}]]></Encrypt></xml>"
        ).encode()
        params = {"msg_signature": signed["MsgSignature"], "timestamp": timestamp, "nonce": nonce}
        return body, params

    def verify_params(self, echo: str) -> dict[str, str]:
        """The query of WeCom's GET that checks the URL: the server must answer `echo`."""
        nonce, timestamp = secrets.token_hex(8), str(int(time.time()))
        key = self._crypto.key
        echostr = PrpCrypto(key).encrypt(echo, self.corp_id)
        echostr = echostr.decode() if isinstance(echostr, bytes) else echostr
        return {
            "msg_signature": _get_signature(self._token, timestamp, nonce, echostr),
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echostr,
        }

    def post(self, url: str, plain_xml: str, *, timeout: float = 10.0) -> httpx.Response:
        body, params = self.envelope(plain_xml)
        return httpx.post(
            url,
            params=params,
            content=body,
            headers={"Content-Type": "text/xml"},
            timeout=timeout,
            trust_env=False,
        )

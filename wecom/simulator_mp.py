"""WeChat's side of the Official Account and mini-program protocols, on loopback.

`WeChatServerSimulator` plays api.weixin.qq.com: `cgi-bin/token`, the customer-service send
`message/custom/send` (records what was sent; 45015 beyond 48 h since the follower's last
message, 45009 while rate-limited, 40001/42001 for a token it no longer accepts) and
`sns/jscode2session` (codes it issued → openid and session_key, once; anything else 40029).
`MpFollower` plays a follower: builds callback XML like WeChat does (plaintext, compatible or
safe mode), signs it, POSTs it to the account's URL and reads the passive reply.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import xmltodict
from wechatpy.crypto import WeChatCrypto

from wecom.loopback import LoopbackServer
from wecom.mp import CUSTOM_SEND_WINDOW_HOURS, MODE_PLAINTEXT, MODE_SAFE, signature_of

_MAX_POST_BYTES = 1024 * 1024


@dataclass(frozen=True)
class SentMessage:
    app_id: str
    openid: str
    text: str
    at: float


class _Handler(BaseHTTPRequestHandler):
    server: WeChatServerSimulator

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the recorded calls are the log."""

    def _answer(self, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _query(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        return parts.path, {key: values[0] for key, values in parse_qs(parts.query).items()}

    def do_GET(self) -> None:
        path, query = self._query()
        sim = self.server
        if path == "/cgi-bin/token":
            self._answer(sim.token_issue(query.get("appid", ""), query.get("secret", "")))
        elif path == "/sns/jscode2session":
            self._answer(
                sim.code_exchange(
                    query.get("appid", ""), query.get("secret", ""), query.get("js_code", "")
                )
            )
        else:
            self._answer({"errcode": 40066, "errmsg": "invalid url"})

    def do_POST(self) -> None:
        path, query = self._query()
        length = min(int(self.headers.get("Content-Length") or 0), _MAX_POST_BYTES)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._answer({"errcode": 47001, "errmsg": "data format error"})
            return
        if path == "/cgi-bin/message/custom/send":
            self._answer(self.server.custom_send(query.get("access_token", ""), body))
        else:
            self._answer({"errcode": 40066, "errmsg": "invalid url"})


class WeChatServerSimulator(LoopbackServer):
    """api.weixin.qq.com on loopback, for any number of app ids registered with `app_add`."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Condition()
        self._secrets: dict[str, str] = {}
        self._tokens: dict[str, str] = {}  # token -> app id
        self._expired: set[str] = set()
        self._codes: dict[str, tuple[str, str, str]] = {}  # code -> app id, openid, unionid
        self._last_message: dict[tuple[str, str], float] = {}
        self.sent: list[SentMessage] = []
        self.token_fetches = 0
        self.rate_limited = False
        super().__init__(_Handler, host=host, port=port)

    # -- test controls -----------------------------------------------------------------------

    def app_add(self, app_id: str, secret: str) -> None:
        with self._lock:
            self._secrets[app_id] = secret

    def follower_spoke(self, app_id: str, openid: str, at: float | None = None) -> None:
        """Open (or, with an old `at`, close) the 48-hour window of a follower."""
        with self._lock:
            self._last_message[(app_id, openid)] = time.time() if at is None else at

    def tokens_expire(self) -> None:
        """Every issued token is refused from now on with 42001, as after two hours."""
        with self._lock:
            self._expired.update(self._tokens)

    def code_issue(self, app_id: str, openid: str, unionid: str = "") -> str:
        """A `wx.login` code for a user of the mini program `app_id`."""
        code = secrets.token_hex(16)
        with self._lock:
            self._codes[code] = (app_id, openid, unionid)
        return code

    def wait_sent(self, count: int, timeout: float = 30.0) -> list[SentMessage]:
        with self._lock:
            self._lock.wait_for(lambda: len(self.sent) >= count, timeout=timeout)
            return list(self.sent)

    # -- WeChat's answers --------------------------------------------------------------------

    def token_issue(self, app_id: str, secret: str) -> dict[str, Any]:
        with self._lock:
            self.token_fetches += 1
            if app_id not in self._secrets:
                return {"errcode": 40013, "errmsg": "invalid appid"}
            if self._secrets[app_id] != secret:
                return {"errcode": 40125, "errmsg": "invalid appsecret"}
            token = secrets.token_urlsafe(24)
            self._tokens[token] = app_id
            return {"access_token": token, "expires_in": 7200}

    def custom_send(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            app_id = self._tokens.get(token)
            if app_id is None:
                return {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"}
            if token in self._expired:
                return {"errcode": 42001, "errmsg": "access_token expired"}
            if self.rate_limited:
                return {"errcode": 45009, "errmsg": "reach max api daily quota limit"}
            openid = str(body.get("touser", ""))
            text = body.get("text", {}).get("content") if body.get("msgtype") == "text" else None
            if not isinstance(text, str):
                return {"errcode": 40008, "errmsg": "invalid message type"}
            if len(text.encode("utf-8")) > 2048:
                return {"errcode": 45002, "errmsg": "content size out of limit"}
            spoke = self._last_message.get((app_id, openid))
            if spoke is None or time.time() - spoke > CUSTOM_SEND_WINDOW_HOURS * 3600:
                return {"errcode": 45015, "errmsg": "response out of time limit"}
            self.sent.append(SentMessage(app_id=app_id, openid=openid, text=text, at=time.time()))
            self._lock.notify_all()
            return {"errcode": 0, "errmsg": "ok"}

    def code_exchange(self, app_id: str, secret: str, code: str) -> dict[str, Any]:
        with self._lock:
            if self._secrets.get(app_id) != secret:
                return {"errcode": 40125, "errmsg": "invalid appsecret"}
            issued = self._codes.pop(code, None)  # a code works once
            if issued is None or issued[0] != app_id:
                return {"errcode": 40029, "errmsg": "invalid code"}
            _app, openid, unionid = issued
            answer = {"openid": openid, "session_key": secrets.token_urlsafe(16)}
            if unionid:
                answer["unionid"] = unionid
            return answer


@dataclass
class PassiveReply:
    """What the account answered: the HTTP status, the raw body and, if any, the reply text."""

    status: int
    body: str
    content: str | None


class MpFollower:
    """A follower of one account: writes to its callback URL as WeChat does."""

    def __init__(
        self,
        *,
        callback_url: str,
        token: str,
        encoding_aes_key: str,
        app_id: str,
        mode: str,
        openid: str = "oFollower0000000000000000001",
        account: str = "gh_0123456789ab",
        server: WeChatServerSimulator | None = None,
    ) -> None:
        self.callback_url = callback_url
        self.token = token
        self.app_id = app_id
        self.mode = mode
        self.openid = openid
        self.account = account
        self.server = server
        self._crypto = (
            WeChatCrypto(token, encoding_aes_key, app_id) if mode != MODE_PLAINTEXT else None
        )
        self._next_msgid = 24_000_000_000_000_000 + secrets.randbelow(10**15)

    def new_msgid(self) -> str:
        self._next_msgid += 1
        return str(self._next_msgid)

    def text_xml(self, content: str, *, msgid: str | None = None) -> str:
        return self._xml(
            {"MsgType": "text", "Content": content, "MsgId": msgid or self.new_msgid()}
        )

    def event_xml(self, event: str) -> str:
        return self._xml({"MsgType": "event", "Event": event, "EventKey": ""})

    def image_xml(self) -> str:
        return self._xml(
            {"MsgType": "image", "PicUrl": "http://127.0.0.1/x.jpg", "MediaId": "m1",
             "MsgId": self.new_msgid()}
        )  # fmt: skip

    def _xml(self, fields: dict[str, str]) -> str:
        body = {
            "ToUserName": self.account,
            "FromUserName": self.openid,
            "CreateTime": str(int(time.time())),
            **fields,
        }
        return str(xmltodict.unparse({"xml": body}, full_document=False))

    def url_verify(self, *, echostr: str = "", bad_signature: bool = False) -> httpx.Response:
        timestamp, nonce = str(int(time.time())), secrets.token_hex(5)
        signature = signature_of(self.token, timestamp, nonce)
        if bad_signature:
            signature = "0" * 40
        params = {
            "signature": signature,
            "timestamp": timestamp,
            "nonce": nonce,
            "echostr": echostr or secrets.token_hex(8),
        }
        return httpx.get(self.callback_url, params=params, trust_env=False, timeout=10)

    def signed(self, xml: str, *, bad_signature: bool = False) -> tuple[str, bytes]:
        """The query string and body WeChat would POST for `xml` in the account's mode."""
        timestamp, nonce = str(int(time.time())), secrets.token_hex(5)
        params = {
            "signature": signature_of(self.token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "openid": self.openid,
        }
        body = xml
        if self._crypto is not None:
            envelope = xmltodict.parse(self._crypto.encrypt_message(xml, nonce, timestamp))["xml"]
            encrypt = envelope["Encrypt"]
            params["encrypt_type"] = "aes"
            params["msg_signature"] = signature_of(self.token, timestamp, nonce, encrypt)
            # Compatible mode carries the plain fields beside <Encrypt>; safe mode only the
            # account's id.
            if self.mode == MODE_SAFE:
                plain = f"<ToUserName><![CDATA[{self.account}]]></ToUserName>"
            else:
                plain = xml.removeprefix("<xml>").removesuffix("</xml>")
            body = f"<xml>{plain}<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        if bad_signature:
            params["signature"] = "0" * 40
            params.pop("msg_signature", None)
        if self.server is not None:
            self.server.follower_spoke(self.app_id, self.openid)
        return urlencode(params), body.encode("utf-8")

    def send(self, xml: str, *, bad_signature: bool = False, timeout: float = 10.0) -> PassiveReply:
        """POST the message as the account's mode wants it; the reply decrypted if it was."""
        query, body = self.signed(xml, bad_signature=bad_signature)
        response = httpx.post(
            f"{self.callback_url}?{query}",
            content=body,
            headers={"Content-Type": "text/xml"},
            trust_env=False,
            timeout=timeout,
        )
        return PassiveReply(
            status=response.status_code,
            body=response.text,
            content=self.reply_content(response.status_code, response.text),
        )

    def reply_content(self, status: int, text: str) -> str | None:
        """The passive reply's text (checked and decrypted like WeChat does), None if empty."""
        if status != 200 or not text.startswith("<xml>"):
            return None
        data = xmltodict.parse(text)["xml"]
        if "Encrypt" in data:
            assert self._crypto is not None
            # Check the account's signature over its reply like WeChat does.
            expected = signature_of(self.token, data["TimeStamp"], data["Nonce"], data["Encrypt"])
            if data.get("MsgSignature") != expected:
                raise AssertionError("reply signature mismatch")
            inner = self._crypto.decrypt_message(
                text, data["MsgSignature"], data["TimeStamp"], data["Nonce"]
            )
            data = xmltodict.parse(inner)["xml"]
        if data.get("ToUserName") != self.openid or data.get("MsgType") != "text":
            raise AssertionError(f"unexpected reply {data!r}")
        return str(data.get("Content") or "")

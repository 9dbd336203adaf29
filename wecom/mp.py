"""WeChat Official Account (公众号) and mini-program protocol: callbacks, replies, server API.

Plain Python over wechatpy: the Django side passes the account's credentials, the API base
and the token store, so the pieces are tested against the simulator without Django.

Callbacks come in three modes chosen in the account's settings: plaintext (XML as is),
compatible (plain fields and `<Encrypt>` together) and safe (only `<Encrypt>`). WeChat signs
every POST with `signature` (token, timestamp, nonce); an encrypted one also carries
`msg_signature` over the ciphertext. Both are checked, in constant time, before anything is
decrypted or parsed.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import xmltodict
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.replies import TextReply
from wechatpy.utils import WeChatSigner

from wecom.messages import split_at_boundary
from wecom.tokens import AccessTokens, TokenError, TokenStore

MODE_PLAINTEXT = "plaintext"
MODE_COMPATIBLE = "compatible"
MODE_SAFE = "safe"
MODES = (MODE_PLAINTEXT, MODE_COMPATIBLE, MODE_SAFE)

DEFAULT_API_BASE = "https://api.weixin.qq.com"
# A text message (passive reply or customer-service send) longer than this is refused or cut
# by WeChat; longer answers go out as numbered parts.
TEXT_MAX_BYTES = 2048
# The customer-service API answers a follower only this long after their last message.
CUSTOM_SEND_WINDOW_HOURS = 48

# errcodes of the customer-service and session APIs.
ERR_RATE_LIMITED = 45009  # api freq out of limit
ERR_OUT_OF_WINDOW = 45015  # response out of time limit (48 h since the follower spoke)
ERR_INVALID_CODE = 40029  # jscode2session: invalid, used or expired code
ERR_SYSTEM_BUSY = -1
RETRYABLE_ERRCODES = frozenset({ERR_RATE_LIMITED, ERR_SYSTEM_BUSY})


class MpSignatureError(Exception):
    """The callback's signature does not match the account's token."""


class MpMessageError(Exception):
    """A callback that does not decrypt or parse, or one the account's mode does not take."""


class MpApiError(Exception):
    """WeChat answered with a non-zero errcode (None: it could not be reached at all)."""

    def __init__(self, errcode: int | None, errmsg: str) -> None:
        super().__init__(f"{errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg

    @property
    def retryable(self) -> bool:
        return self.errcode is None or self.errcode in RETRYABLE_ERRCODES


def signature_of(*parts: str) -> str:
    """WeChat's signature: sha1 over the sorted, concatenated parts."""
    signer = WeChatSigner()
    signer.add_data(*parts)
    return str(signer.signature)


def _signature_check(expected: str, *parts: str) -> None:
    if not expected or not hmac.compare_digest(expected.encode(), signature_of(*parts).encode()):
        raise MpSignatureError("signature mismatch")


@dataclass(frozen=True, slots=True)
class MpInbound:
    """One follower message or event, as the product needs it."""

    msgid: str  # MsgId; events have none: FromUserName + CreateTime, WeChat's own advice
    msgtype: str  # text, voice, image, ..., event
    event: str  # subscribe, unsubscribe, ... ("" for messages)
    openid: str  # FromUserName: the follower
    account: str  # ToUserName: the account's original id (gh_...)
    text: str | None  # text content, or a voice message's recognition
    encrypted: bool  # arrived encrypted: the passive reply is encrypted too
    message: Any = field(repr=False)  # wechatpy's parsed object, for building replies


class MpCallbackCodec:
    """Checks, decrypts and parses one account's callbacks, and renders its passive replies."""

    def __init__(self, *, token: str, encoding_aes_key: str, app_id: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.token = token
        self.mode = mode
        self._crypto: WeChatCrypto | None = None
        if mode != MODE_PLAINTEXT:
            if len(encoding_aes_key) != 43:
                raise ValueError("EncodingAESKey must have 43 characters")
            self._crypto = WeChatCrypto(token, encoding_aes_key, app_id)

    def verify_url(self, *, signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """Server address verification (GET): the echostr back, as is, when signed by us."""
        _signature_check(signature, self.token, timestamp, nonce)
        return echostr

    def open(self, *, body: bytes, params: dict[str, str]) -> MpInbound:
        """The callback's message; raises before parsing anything unsigned."""
        _signature_check(
            params.get("signature", ""), self.token, params["timestamp"], params["nonce"]
        )
        encrypted = params.get("encrypt_type", "") == "aes"
        if encrypted:
            if self._crypto is None:
                raise MpMessageError("encrypted callback for a plaintext account")
            xml = self._decrypt(body=body, params=params)
        else:
            if self.mode == MODE_SAFE:
                raise MpMessageError("plaintext callback for a safe-mode account")
            xml = body.decode("utf-8", errors="strict")
        return _inbound(xml, encrypted=encrypted)

    def _decrypt(self, *, body: bytes, params: dict[str, str]) -> str:
        assert self._crypto is not None
        try:
            envelope = xmltodict.parse(body.decode("utf-8"))["xml"]
            ciphertext = str(envelope["Encrypt"])
        except Exception as exc:  # anything unreadable is one indistinguishable error
            raise MpMessageError("no Encrypt element") from exc
        _signature_check(
            params.get("msg_signature", ""), self.token, params["timestamp"], params["nonce"],
            ciphertext,
        )  # fmt: skip
        try:
            plain = self._crypto.decrypt_message(
                {"Encrypt": ciphertext}, params["msg_signature"], params["timestamp"],
                params["nonce"],
            )  # fmt: skip
        except Exception as exc:
            raise MpMessageError("does not decrypt") from exc
        return str(plain)

    def text_reply(self, *, inbound: MpInbound, content: str, nonce: str, timestamp: str) -> str:
        """The passive reply XML, encrypted when the callback was."""
        xml = TextReply(message=inbound.message, content=content).render()
        if inbound.encrypted and self._crypto is not None:
            return str(self._crypto.encrypt_message(xml, nonce, timestamp))
        return str(xml)


def _inbound(xml: str, *, encrypted: bool) -> MpInbound:
    try:
        message = parse_message(xml)
        data: dict[str, Any] = dict(message._data)
    except Exception as exc:
        raise MpMessageError("malformed XML") from exc
    openid = str(data.get("FromUserName") or "")
    if not openid or len(openid) > 64:
        raise MpMessageError("missing or over-long FromUserName")
    msgtype = str(data.get("MsgType") or "").lower()
    msgid = str(data.get("MsgId") or "") or f"{openid}:{data.get('CreateTime', '')}"
    if len(msgid) > 100:
        raise MpMessageError("over-long MsgId")
    text: str | None = None
    if msgtype == "text":
        text = str(data.get("Content") or "")
    elif msgtype == "voice" and data.get("Recognition"):
        text = str(data["Recognition"])
    return MpInbound(
        msgid=msgid,
        msgtype=msgtype,
        event=str(data.get("Event") or "").lower() if msgtype == "event" else "",
        openid=openid,
        account=str(data.get("ToUserName") or ""),
        text=text,
        encrypted=encrypted,
        message=message,
    )


def text_parts(text: str, limit_bytes: int = TEXT_MAX_BYTES) -> list[str]:
    """The text as messages of at most `limit_bytes`, numbered "(1/3) " when more than one.

    Never truncated: a follower gets the whole answer, in order.
    """
    if len(text.encode("utf-8")) <= limit_bytes:
        return [text]
    # Room for the "(NN/NN) " prefix; 99 parts of 2 KB is far past any answer.
    budget = limit_bytes - len("(99/99) ")
    parts: list[str] = []
    rest = text
    while rest:
        head, rest = split_at_boundary(rest, budget)
        parts.append(head.strip())
        rest = rest.lstrip()
    parts = [part for part in parts if part]
    return [f"({index}/{len(parts)}) {part}" for index, part in enumerate(parts, start=1)]


@dataclass(frozen=True, slots=True)
class MpSession:
    """What `jscode2session` says about a mini-program user."""

    openid: str
    session_key: str = field(repr=False)
    unionid: str = ""


class MpClient:
    """WeChat's server API for one app id: token, customer-service send, jscode2session."""

    def __init__(
        self,
        *,
        api_base: str,
        app_id: str,
        app_secret: str,
        store: TokenStore,
        timeout: float = 10.0,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.app_id = app_id
        self._secret = app_secret
        self._timeout = timeout
        self.tokens = AccessTokens(store=store, key=f"wechat:{app_id}", fetch=self._token_fetch)

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            response = httpx.get(
                self.api_base + path, params=params, timeout=self._timeout, trust_env=False
            )
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MpApiError(None, f"{path}: {exc.__class__.__name__}") from exc
        if not isinstance(body, dict):
            raise MpApiError(None, f"{path}: not a JSON object")
        return body

    def _token_fetch(self) -> tuple[str, int]:
        body = self._get(
            "/cgi-bin/token",
            {"grant_type": "client_credential", "appid": self.app_id, "secret": self._secret},
        )
        if body.get("errcode"):
            raise TokenError(int(body["errcode"]), str(body.get("errmsg", "")))
        return str(body.get("access_token") or ""), int(body.get("expires_in") or 7200)

    def custom_text_send(self, *, openid: str, text: str) -> None:
        """One text message through the customer-service API (`message/custom/send`)."""
        payload = {"touser": openid, "msgtype": "text", "text": {"content": text}}

        def request(token: str) -> dict[str, Any]:
            try:
                response = httpx.post(
                    f"{self.api_base}/cgi-bin/message/custom/send",
                    params={"access_token": token},
                    content=_json_bytes(payload),
                    headers={"Content-Type": "application/json; charset=utf-8"},
                    timeout=self._timeout,
                    trust_env=False,
                )
                body = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise MpApiError(None, f"message/custom/send: {exc.__class__.__name__}") from exc
            return body if isinstance(body, dict) else {"errcode": -1, "errmsg": "not JSON"}

        try:
            reply = self.tokens.call(request)
        except TokenError as exc:
            raise MpApiError(exc.errcode, exc.errmsg) from exc
        if reply.get("errcode"):
            raise MpApiError(int(reply["errcode"]), str(reply.get("errmsg", "")))

    def jscode2session(self, *, code: str) -> MpSession:
        """Exchange a mini program's `wx.login` code (valid once, 5 minutes) for the openid."""
        body = self._get(
            "/sns/jscode2session",
            {
                "appid": self.app_id,
                "secret": self._secret,
                "js_code": code,
                "grant_type": "authorization_code",
            },
        )
        if body.get("errcode") or not body.get("openid"):
            raise MpApiError(
                int(body.get("errcode") or ERR_INVALID_CODE), str(body.get("errmsg", ""))
            )
        return MpSession(
            openid=str(body["openid"]),
            session_key=str(body.get("session_key", "")),
            unionid=str(body.get("unionid") or ""),
        )


def _json_bytes(payload: dict[str, Any]) -> bytes:
    # WeChat shows \uXXXX escapes literally in custom messages: send UTF-8 as is.
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")

"""Frames of the AI bot's long connection (WeCom doc 101463): `{cmd, headers: {req_id}, body}`.

Acks are `{headers: {req_id}, errcode, errmsg}` with no `cmd`. Both the client and the
simulator parse and serialise through here, so a malformed frame fails the same way on
either side: one `FrameError` that says what was wrong, never a KeyError deep in a loop.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

DEFAULT_URL = "wss://openws.work.weixin.qq.com"

# Commands, developer → WeCom.
CMD_SUBSCRIBE = "aibot_subscribe"
CMD_PING = "ping"
CMD_RESPOND_MSG = "aibot_respond_msg"
CMD_RESPOND_WELCOME = "aibot_respond_welcome_msg"
CMD_RESPOND_UPDATE = "aibot_respond_update_msg"
CMD_SEND_MSG = "aibot_send_msg"
# Commands, WeCom → developer.
CMD_MSG_CALLBACK = "aibot_msg_callback"
CMD_EVENT_CALLBACK = "aibot_event_callback"
CALLBACK_COMMANDS = frozenset({CMD_MSG_CALLBACK, CMD_EVENT_CALLBACK})

EVENT_ENTER_CHAT = "enter_chat"
EVENT_TEMPLATE_CARD = "template_card_event"
EVENT_FEEDBACK = "feedback_event"
EVENT_DISCONNECTED = "disconnected_event"

# Error codes. 846605 and 846608 are in the protocol notes (docs/wecom-protocol.md §2);
# 853000 ("invalid bot_id or secret") is what implementers report for a wrong secret; WeCom
# documents no code for the per-conversation rate limit, so 45009 (its general "API
# frequency out of limit") stands in: rely on "non-zero", not on these values.
ERRCODE_OK = 0
ERRCODE_INVALID_REQ_ID = 846605
ERRCODE_STREAM_EXPIRED = 846608
ERRCODE_AUTH_FAILED = 853000
ERRCODE_RATE_LIMITED = 45009

# Far above any real frame (stream content is capped at 20480 bytes); larger is not WeCom.
MAX_FRAME_BYTES = 1024 * 1024
MAX_REQ_ID_CHARS = 256


class FrameError(ValueError):
    """A frame that is not JSON or not the documented shape; the message says which part."""


def new_req_id(prefix: str) -> str:
    """A fresh request id; the prefix only makes logs readable."""
    return f"{prefix}_{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class Frame:
    """A command frame in either direction."""

    cmd: str
    req_id: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def is_callback(self) -> bool:
        return self.cmd in CALLBACK_COMMANDS

    @property
    def eventtype(self) -> str | None:
        """`event.eventtype` of an event callback, None for anything else."""
        if self.cmd != CMD_EVENT_CALLBACK:
            return None
        event = self.body.get("event")
        value = event.get("eventtype") if isinstance(event, dict) else None
        return value if isinstance(value, str) else None

    @property
    def conversation_key(self) -> str | None:
        """The chat a callback belongs to (group chatid, else the user): the rate-limit key."""
        chatid = self.body.get("chatid")
        if isinstance(chatid, str) and chatid:
            return chatid
        sender = self.body.get("from")
        userid = sender.get("userid") if isinstance(sender, dict) else None
        return userid if isinstance(userid, str) and userid else None

    def to_json(self) -> str:
        return _dump({"cmd": self.cmd, "headers": {"req_id": self.req_id}, "body": self.body})


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to one command, matched to it by req_id."""

    req_id: str
    errcode: int
    errmsg: str = ""
    body: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.errcode == ERRCODE_OK

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "headers": {"req_id": self.req_id},
            "errcode": self.errcode,
            "errmsg": self.errmsg,
        }
        if self.body is not None:
            data["body"] = self.body
        return _dump(data)


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _req_id(data: dict[str, Any]) -> str:
    headers = data.get("headers")
    if not isinstance(headers, dict):
        raise FrameError("frame has no headers object")
    req_id = headers.get("req_id")
    if not isinstance(req_id, str) or not req_id:
        raise FrameError("frame headers.req_id must be a non-empty string")
    if len(req_id) > MAX_REQ_ID_CHARS:
        raise FrameError(f"frame headers.req_id is longer than {MAX_REQ_ID_CHARS} characters")
    return req_id


def parse_frame(raw: str | bytes) -> Frame | Ack:
    """Turn one WebSocket message into a Frame (it has `cmd`) or an Ack (it has `errcode`)."""
    if len(raw) > MAX_FRAME_BYTES:
        raise FrameError(f"frame is larger than {MAX_FRAME_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"frame is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FrameError("frame must be a JSON object")
    req_id = _req_id(data)
    cmd = data.get("cmd")
    body = data.get("body")
    if body is not None and not isinstance(body, dict):
        raise FrameError("frame body must be a JSON object")
    if cmd is None:
        errcode = data.get("errcode")
        if isinstance(errcode, bool) or not isinstance(errcode, int):
            raise FrameError("frame has neither cmd nor an integer errcode")
        errmsg = data.get("errmsg", "")
        return Ack(req_id=req_id, errcode=errcode, errmsg=str(errmsg), body=body)
    if not isinstance(cmd, str) or not cmd:
        raise FrameError("frame cmd must be a non-empty string")
    return Frame(cmd=cmd, req_id=req_id, body=body or {})

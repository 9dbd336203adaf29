"""微信客服 (WeChat customer service): pull customers' messages, reply, hand over to a human.

The callback event `kf_msg_or_event` only says that something arrived; the messages are
pulled with `kf/sync_msg` from a cursor the caller keeps durable, answered with
`kf/send_msg` within WeCom's reply window (48 hours after the customer's last message, a
few messages each time), and a customer is handed to a person with
`kf/service_state/trans`. Calls go through an `AppClient` of the app that manages 微信客服.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from wecom.app import AppClient

SYNC_MSG_PATH = "/cgi-bin/kf/sync_msg"
SEND_MSG_PATH = "/cgi-bin/kf/send_msg"
STATE_TRANS_PATH = "/cgi-bin/kf/service_state/trans"
STATE_GET_PATH = "/cgi-bin/kf/service_state/get"

KF_EVENT = "kf_msg_or_event"
SYNC_PAGE_LIMIT = 1000
TEXT_MAX_BYTES = 2048

# Who wrote a pulled message (`origin`).
ORIGIN_CUSTOMER = 3
ORIGIN_SYSTEM = 4
ORIGIN_SERVICER = 5

# Session states (`service_state`): untouched, the bot (智能助手), waiting in the pool for a
# person, with a person, ended.
STATE_NEW = 0
STATE_BOT = 1
STATE_POOL = 2
STATE_HUMAN = 3
STATE_ENDED = 4

# WeCom's errcodes for 微信客服 (global errcode list, 950xx).
INVALID_OPEN_KFID = 95000
INVALID_MSG_TOKEN = 95007
SESSION_ENDED = 95013
STATE_CHANGE_REFUSED = 95016
SEND_NOT_ALLOWED = 95018  # outside the reply window, or the session is not the bot's

# "转人工" and friends: the customer asks for a person.
_HUMAN_REQUEST = re.compile(
    r"(转?人工|真人|人工客服|客服人员|找客服|\bhuman\b|\b(?:real|live) (?:person|agent)\b"
    r"|\bspeak to (?:an? )?(?:agent|person|human)\b)",
    re.IGNORECASE,
)


def asks_for_human(text: str) -> bool:
    return bool(_HUMAN_REQUEST.search(text or ""))


@dataclass(frozen=True, slots=True)
class KfMessage:
    """One pulled message or event; `text` is set for a customer's text message."""

    msgid: str
    open_kfid: str
    external_userid: str
    origin: int
    msgtype: str
    send_time: int
    text: str | None = None
    event: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def from_customer(self) -> bool:
        return self.origin == ORIGIN_CUSTOMER


@dataclass(frozen=True, slots=True)
class KfPage:
    messages: list[KfMessage]
    next_cursor: str
    has_more: bool


def kf_message_parse(data: dict[str, Any]) -> KfMessage:
    msgtype = str(data.get("msgtype") or "")
    text = None
    if msgtype == "text":
        text = str((data.get("text") or {}).get("content") or "")
    event = data.get("event") if msgtype == "event" else None
    external_userid = str(data.get("external_userid") or "")
    if isinstance(event, dict) and not external_userid:
        external_userid = str(event.get("external_userid") or "")
    return KfMessage(
        msgid=str(data.get("msgid") or ""),
        open_kfid=str(data.get("open_kfid") or ""),
        external_userid=external_userid,
        origin=int(data.get("origin") or 0),
        msgtype=msgtype,
        send_time=int(data.get("send_time") or 0),
        text=text,
        event=event if isinstance(event, dict) else {},
        raw=data,
    )


def kf_sync(
    client: AppClient, *, open_kfid: str, cursor: str, token: str = "", limit: int = SYNC_PAGE_LIMIT
) -> KfPage:
    """One page of messages after `cursor`; keep `next_cursor` only once they are recorded."""
    body: dict[str, Any] = {"cursor": cursor, "limit": limit, "open_kfid": open_kfid}
    if token:
        body["token"] = token
    reply = client.post(SYNC_MSG_PATH, body)
    return KfPage(
        messages=[kf_message_parse(item) for item in reply.get("msg_list") or []],
        next_cursor=str(reply.get("next_cursor") or cursor),
        has_more=bool(reply.get("has_more")),
    )


def kf_send_text(
    client: AppClient, *, open_kfid: str, external_userid: str, content: str
) -> dict[str, Any]:
    return client.post(
        SEND_MSG_PATH,
        {
            "touser": external_userid,
            "open_kfid": open_kfid,
            "msgtype": "text",
            "text": {"content": content},
        },
    )


def kf_state_trans(
    client: AppClient,
    *,
    open_kfid: str,
    external_userid: str,
    service_state: int,
    servicer_userid: str = "",
) -> dict[str, Any]:
    """Move the customer's session: STATE_POOL queues them for the next free person."""
    body: dict[str, Any] = {
        "open_kfid": open_kfid,
        "external_userid": external_userid,
        "service_state": service_state,
    }
    if servicer_userid:
        body["servicer_userid"] = servicer_userid
    return client.post(STATE_TRANS_PATH, body)

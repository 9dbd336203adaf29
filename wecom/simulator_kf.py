"""微信客服 on loopback, served by `AppApiServer`: a message log, reply windows, session states.

Customers "write" through `customer_says`, which returns the token the callback event
carries; `kf/sync_msg` serves the log after a cursor, `kf/send_msg` enforces WeCom's rules
(only while the bot holds the session, within 48 hours of the customer's last message, at
most five replies to it) and `kf/service_state/trans` moves sessions between the bot, the
pool and a person.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from wecom.app import CONTENT_TOO_LONG
from wecom.kf import (
    INVALID_MSG_TOKEN,
    INVALID_OPEN_KFID,
    ORIGIN_CUSTOMER,
    ORIGIN_SYSTEM,
    SEND_MSG_PATH,
    SEND_NOT_ALLOWED,
    STATE_BOT,
    STATE_CHANGE_REFUSED,
    STATE_ENDED,
    STATE_HUMAN,
    STATE_NEW,
    STATE_POOL,
    STATE_TRANS_PATH,
    SYNC_MSG_PATH,
    TEXT_MAX_BYTES,
)

REPLY_WINDOW_SECONDS = 48 * 3600
REPLIES_PER_MESSAGE = 5
PATHS = frozenset({SYNC_MSG_PATH, SEND_MSG_PATH, STATE_TRANS_PATH})

_ALLOWED_MOVES = {
    STATE_NEW: {STATE_BOT, STATE_POOL, STATE_HUMAN, STATE_ENDED},
    STATE_BOT: {STATE_POOL, STATE_HUMAN, STATE_ENDED},
    STATE_POOL: {STATE_HUMAN, STATE_ENDED},
    STATE_HUMAN: {STATE_ENDED},
    STATE_ENDED: set(),
}


class KfDesk:
    def __init__(self, *, open_kfids: set[str], clock: Callable[[], float] = time.time) -> None:
        self.open_kfids = set(open_kfids)
        self.clock = clock  # wall-clock seconds: tests move it past the reply window
        self._lock = threading.Lock()
        self._log: list[dict[str, Any]] = []
        self._tokens: set[str] = set()
        self.states: dict[tuple[str, str], int] = {}
        self._last_customer_at: dict[tuple[str, str], float] = {}
        self._replies: dict[tuple[str, str], int] = {}
        self.sent: list[dict[str, Any]] = []
        self.msgids: list[str] = []  # of the customers' messages, in order
        self.syncs = 0

    def customer_says(self, *, open_kfid: str, external_userid: str, text: str) -> str:
        """Log a customer's message; returns the token of the callback event it triggers."""
        key = (open_kfid, external_userid)
        with self._lock:
            now = self.clock()
            self.msgids.append(secrets.token_hex(12))
            self._log.append(
                {
                    "msgid": self.msgids[-1],
                    "open_kfid": open_kfid,
                    "external_userid": external_userid,
                    "send_time": int(now),
                    "origin": ORIGIN_CUSTOMER,
                    "msgtype": "text",
                    "text": {"content": text},
                }
            )
            if self.states.get(key, STATE_NEW) == STATE_ENDED:
                self.states[key] = STATE_NEW  # a new session starts
            self.states.setdefault(key, STATE_NEW)
            self._last_customer_at[key] = now
            self._replies[key] = 0
            token = secrets.token_urlsafe(16)
            self._tokens.add(token)
            return token

    def session_end(self, *, open_kfid: str, external_userid: str) -> None:
        """The person closes the session (a system event in the log)."""
        with self._lock:
            self.states[(open_kfid, external_userid)] = STATE_ENDED
            self._log.append(
                {
                    "msgid": secrets.token_hex(12),
                    "open_kfid": open_kfid,
                    "send_time": int(self.clock()),
                    "origin": ORIGIN_SYSTEM,
                    "msgtype": "event",
                    "event": {
                        "event_type": "session_status_change",
                        "open_kfid": open_kfid,
                        "external_userid": external_userid,
                        "change_type": 3,
                    },
                }
            )

    def texts_to(self, external_userid: str) -> list[str]:
        with self._lock:
            return [s["text"]["content"] for s in self.sent if s["touser"] == external_userid]

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == SYNC_MSG_PATH:
            return self._sync(body)
        if path == SEND_MSG_PATH:
            return self._send(body)
        return self._trans(body)

    def _sync(self, body: dict[str, Any]) -> dict[str, Any]:
        open_kfid = str(body.get("open_kfid") or "")
        if open_kfid not in self.open_kfids:
            return _error(INVALID_OPEN_KFID, "invalid open_kfid")
        token = body.get("token")
        cursor = str(body.get("cursor") or "0")
        limit = max(1, min(int(body.get("limit") or 1000), 1000))
        with self._lock:
            if token is not None and token not in self._tokens:
                return _error(INVALID_MSG_TOKEN, "invalid msg token")
            if not cursor.isdigit():
                return _error(40058, "invalid cursor")
            self.syncs += 1
            start = int(cursor)
            mine = [
                (index, entry)
                for index, entry in enumerate(self._log)
                if index >= start and entry["open_kfid"] == open_kfid
            ]
            page = mine[:limit]
            next_cursor = str(page[-1][0] + 1) if page else cursor
            return {
                "errcode": 0,
                "errmsg": "ok",
                "next_cursor": next_cursor,
                "has_more": 1 if len(mine) > limit else 0,
                "msg_list": [dict(entry) for _index, entry in page],
            }

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        open_kfid = str(body.get("open_kfid") or "")
        if open_kfid not in self.open_kfids:
            return _error(INVALID_OPEN_KFID, "invalid open_kfid")
        content = (body.get("text") or {}).get("content") or ""
        if body.get("msgtype") != "text" or not content:
            return _error(40008, "invalid message type")
        if len(content.encode("utf-8")) > TEXT_MAX_BYTES:
            return _error(CONTENT_TOO_LONG, "content size out of limit")
        key = (open_kfid, str(body.get("touser") or ""))
        with self._lock:
            if self.states.get(key, STATE_ENDED) not in (STATE_NEW, STATE_BOT):
                return _error(SEND_NOT_ALLOWED, "session state does not allow sending")
            last = self._last_customer_at.get(key)
            if last is None or self.clock() - last > REPLY_WINDOW_SECONDS:
                return _error(SEND_NOT_ALLOWED, "reply window expired")
            if self._replies.get(key, 0) >= REPLIES_PER_MESSAGE:
                return _error(SEND_NOT_ALLOWED, "reply count exhausted")
            self._replies[key] = self._replies.get(key, 0) + 1
            self.sent.append(dict(body))
        return {"errcode": 0, "errmsg": "ok", "msgid": secrets.token_hex(8)}

    def _trans(self, body: dict[str, Any]) -> dict[str, Any]:
        open_kfid = str(body.get("open_kfid") or "")
        if open_kfid not in self.open_kfids:
            return _error(INVALID_OPEN_KFID, "invalid open_kfid")
        key = (open_kfid, str(body.get("external_userid") or ""))
        target = int(body.get("service_state") or 0)
        with self._lock:
            current = self.states.get(key)
            if current is None or target not in _ALLOWED_MOVES[current]:
                return _error(STATE_CHANGE_REFUSED, "service state change not allowed")
            if target == STATE_HUMAN and not body.get("servicer_userid"):
                return _error(STATE_CHANGE_REFUSED, "servicer_userid required")
            self.states[key] = target
        return {"errcode": 0, "errmsg": "ok", "msg_code": secrets.token_hex(8)}


def _error(errcode: int, errmsg: str) -> dict[str, Any]:
    return {"errcode": errcode, "errmsg": errmsg}

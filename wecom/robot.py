"""WeCom group robot (群机器人) webhook: markdown messages into a group, send only.

`POST {base}/cgi-bin/webhook/send?key=KEY`; WeCom allows 20 messages a minute per robot
(errcode 45009 beyond) and markdown content up to 4,096 bytes. The key is a bearer
credential: it never appears in an error message.
"""

from __future__ import annotations

from typing import Any

import httpx

DEFAULT_API_BASE = "https://qyapi.weixin.qq.com"
WEBHOOK_PATH = "/cgi-bin/webhook/send"
MAX_MARKDOWN_BYTES = 4096
MESSAGES_PER_MINUTE = 20
RATE_LIMITED = 45009
INVALID_KEY = 93000


class RobotError(Exception):
    """A webhook send failed; `errcode` is WeCom's (None for transport errors)."""

    def __init__(self, message: str, *, errcode: int | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode

    @property
    def retryable(self) -> bool:
        return self.errcode is None or self.errcode in (RATE_LIMITED, -1)


def markdown_fit(content: str) -> str:
    """`content` cut at a character boundary to WeCom's limit, saying that it was cut."""
    if len(content.encode()) <= MAX_MARKDOWN_BYTES:
        return content
    marker = "\n…"
    budget = MAX_MARKDOWN_BYTES - len(marker.encode())
    return content.encode()[:budget].decode(errors="ignore") + marker


def robot_send_markdown(
    *, key: str, content: str, base_url: str = DEFAULT_API_BASE, http: httpx.Client | None = None
) -> None:
    if not key:
        raise RobotError("the robot has no webhook key", errcode=INVALID_KEY)
    body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"content": markdown_fit(content)}}
    client = http or httpx.Client(timeout=10.0, trust_env=False)
    try:
        response = client.post(base_url.rstrip("/") + WEBHOOK_PATH, params={"key": key}, json=body)
    except httpx.HTTPError as exc:
        raise RobotError(f"webhook unreachable: {exc.__class__.__name__}") from None
    finally:
        if http is None:
            client.close()
    try:
        data = response.json()
    except ValueError:
        raise RobotError(f"webhook answered HTTP {response.status_code}, not JSON") from None
    errcode = int(data.get("errcode", -1)) if isinstance(data, dict) else -1
    if errcode != 0:
        errmsg = str(data.get("errmsg", ""))[:200] if isinstance(data, dict) else ""
        raise RobotError(f"webhook refused the message: {errcode} {errmsg}", errcode=errcode)

"""Outbound calls to WeCom made outside a callback: the AI bot's one-shot response_url (101138)."""

from __future__ import annotations

from typing import Any

import httpx

# Every outbound base URL is configurable so tests can point it at the loopback simulator.
DEFAULT_API_BASE = "https://qyapi.weixin.qq.com"


class ResponseUrlError(Exception):
    """A response_url POST failed: transport error, HTTP error or a non-zero errcode.

    `errcode` is WeCom's code when it answered with one, else None. The URL itself is never
    part of the message: it is a single-use credential.
    """

    def __init__(self, message: str, *, errcode: int | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode


def post_response_url(
    url: str,
    payload: dict[str, Any],
    *,
    timeout: float = 10.0,
    client: httpx.Client | None = None,
) -> dict[str, Any]:
    """POST payload as JSON to a response_url and return WeCom's JSON answer.

    A response_url works once, so callers must not retry blindly after a success-looking
    transport error; the raised ResponseUrlError says which kind of failure happened.
    """
    try:
        if client is None:
            with httpx.Client(timeout=timeout) as own_client:
                response = own_client.post(url, json=payload)
        else:
            response = client.post(url, json=payload, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ResponseUrlError(
            f"response_url request failed: {type(exc).__name__}: {exc}"
        ) from None
    if response.status_code != httpx.codes.OK:
        raise ResponseUrlError(f"response_url answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise ResponseUrlError("response_url answered with a non-JSON body") from None
    if not isinstance(body, dict):
        raise ResponseUrlError("response_url answered with a JSON value that is not an object")
    errcode = body.get("errcode", 0)
    if errcode != 0:
        code = errcode if isinstance(errcode, int) else None
        raise ResponseUrlError(
            f"response_url rejected the message: errcode={errcode} errmsg={body.get('errmsg')!r}",
            errcode=code,
        )
    return body

"""Access tokens for WeCom's and WeChat's server APIs, shared by every process.

`gettoken` (WeCom) and `cgi-bin/token` (WeChat) hand out a token valid for about two hours,
and both platforms rate-limit the token endpoint itself, so a token is fetched once and
kept in a store all processes share until shortly before it expires. A call answered
"invalid or expired token" (40001, 40014, 42001: rotated secret, token issued elsewhere)
drops the token, fetches a new one once and retries once; anything else is the caller's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

# Token refused: invalid credential (40001), invalid access_token (40014), expired (42001).
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
# Fetched tokens are dropped this long before the platform's expiry.
EXPIRY_MARGIN_SECONDS = 300


class TokenStore(Protocol):
    """Where the current token lives (Redis in the product): shared by all processes."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str, ttl: float) -> None: ...

    def delete(self, key: str) -> None: ...


class TokenError(Exception):
    """The token endpoint refused the credentials (or answered without a token)."""

    def __init__(self, errcode: int | None, errmsg: str) -> None:
        super().__init__(f"{errcode} {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


# A fetch returns the token and its lifetime in seconds (`expires_in`).
Fetch = Callable[[], tuple[str, int]]


class AccessTokens:
    """One credential's token: cached in `store` under `key`, fetched by `fetch`."""

    def __init__(self, *, store: TokenStore, key: str, fetch: Fetch) -> None:
        self._store = store
        self._key = key
        self._fetch = fetch
        self._lock = threading.Lock()  # one fetch at a time in this process

    def get(self) -> str:
        token = self._store.get(self._key)
        if token:
            return token
        with self._lock:
            token = self._store.get(self._key)  # another thread fetched it meanwhile
            if token:
                return token
            return self._fetch_and_keep()

    def refresh(self, *, stale: str) -> str:
        """Drop `stale` and fetch anew, unless another caller already replaced it."""
        with self._lock:
            current = self._store.get(self._key)
            if current and current != stale:
                return current
            self._store.delete(self._key)
            return self._fetch_and_keep()

    def call(self, request: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """`request(token)`; refused for the token once, it runs again with a fresh one."""
        token = self.get()
        reply = request(token)
        if reply.get("errcode") in TOKEN_ERRORS:
            reply = request(self.refresh(stale=token))
        return reply

    def _fetch_and_keep(self) -> str:
        token, expires_in = self._fetch()
        if not token:
            raise TokenError(None, "the token endpoint answered without a token")
        ttl = max(expires_in - EXPIRY_MARGIN_SECONDS, expires_in / 2)
        self._store.set(self._key, token, ttl)
        return token

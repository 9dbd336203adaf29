"""WeCom's contact API client: `/cgi-bin/gettoken`, `department/list` and `user/list`.

Plain Python: the caller passes the API base URL, the credentials and where the access token
is kept (Django's cache in the app), so the client works and is tested without Django.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any, Protocol

import httpx

logger = logging.getLogger(__name__)

# errcodes meaning the access token is invalid (40014) or expired (42001): fetch a new one.
TOKEN_ERRCODES = frozenset({40014, 42001})
# WeCom tokens live 7200 s; renew a little early so a request never carries a dying one.
_TOKEN_SAFETY_SECONDS = 300


class WeComApiError(Exception):
    """WeCom answered with a non-zero errcode, or not with JSON at all."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errcode, errmsg)
        self.errcode = errcode
        self.errmsg = errmsg

    def __str__(self) -> str:
        return f"WeCom API error {self.errcode}: {self.errmsg}"


class TokenCache(Protocol):
    """Where access tokens are kept between clients; Django's cache has this shape."""

    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any, timeout: float | None = ...) -> Any: ...


class MemoryTokenCache:
    """A per-process token store for callers without a shared cache (scripts, tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Any, float | None]] = {}

    def get(self, key: str) -> Any:
        with self._lock:
            value, expires = self._entries.get(key, (None, None))
            if expires is not None and expires <= time.monotonic():
                self._entries.pop(key, None)
                return None
            return value

    def set(self, key: str, value: Any, timeout: float | None = None) -> None:
        with self._lock:
            expires = None if timeout is None else time.monotonic() + timeout
            self._entries[key] = (value, expires)


class ContactClient:
    """A minimal client for WeCom's contact API with the access token kept in `token_cache`.

    A shared cache lets every process reuse one token instead of asking WeCom for a new
    one each time (gettoken is rate-limited).
    """

    def __init__(
        self,
        *,
        corp_id: str,
        secret: str,
        base_url: str,
        token_cache: TokenCache | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        if not corp_id or not secret:
            raise WeComApiError(-1, "WECOM_CORP_ID and WECOM_CONTACT_SECRET must be set")
        self.corp_id = corp_id
        self._secret = secret
        self.base_url = base_url.rstrip("/")
        self._cache: TokenCache = token_cache if token_cache is not None else MemoryTokenCache()
        self._http = http or httpx.Client(timeout=10.0, trust_env=False)
        secret_hash = hashlib.sha256(secret.encode()).hexdigest()[:16]
        self._token_key = f"wecom:contact-token:{corp_id}:{secret_hash}"

    def close(self) -> None:
        self._http.close()

    def departments(self) -> list[dict[str, Any]]:
        return list(self._get("/cgi-bin/department/list", {}).get("department", []))

    def users(self, *, department_id: int) -> list[dict[str, Any]]:
        data = self._get("/cgi-bin/user/list", {"department_id": department_id})
        return list(data.get("userlist", []))

    def access_token(self, *, refresh: bool = False) -> str:
        token = None if refresh else self._cache.get(self._token_key)
        if token:
            return str(token)
        data = self._request(
            "/cgi-bin/gettoken", {"corpid": self.corp_id, "corpsecret": self._secret}
        )
        token = str(data["access_token"])
        lifetime = int(data.get("expires_in", 7200)) - _TOKEN_SAFETY_SECONDS
        self._cache.set(self._token_key, token, timeout=max(lifetime, 60))
        return token

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._request(path, {**params, "access_token": self.access_token()})
        except WeComApiError as exc:
            if exc.errcode not in TOKEN_ERRCODES:
                raise
            logger.info("WeCom access token rejected (%s); fetching a new one", exc.errcode)
            token = self.access_token(refresh=True)
            return self._request(path, {**params, "access_token": token})

    def _request(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        response = self._http.get(self.base_url + path, params=params)
        try:
            data = response.json()
        except ValueError:
            raise WeComApiError(
                -1, f"HTTP {response.status_code} from {path} was not JSON"
            ) from None
        if not isinstance(data, dict):
            raise WeComApiError(-1, f"HTTP {response.status_code} from {path} was not an object")
        errcode = int(data.get("errcode", 0))
        if errcode != 0:
            raise WeComApiError(errcode, str(data.get("errmsg", "")))
        return data

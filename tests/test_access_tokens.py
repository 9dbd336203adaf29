"""Access tokens shared through Redis: fetched once, refreshed once when refused, encrypted.

The token endpoint here is a counter standing in for `gettoken`; the store is the real
Redis behind Django's cache. The channels' own tests run the same class against the
simulator's token endpoints.
"""

from __future__ import annotations

import threading

import pytest
from django.core.cache import cache

from apps.core.tokens import token_store
from wecom.tokens import AccessTokens, TokenError

pytestmark = pytest.mark.django_db


class Issuer:
    """Hands out token-1, token-2, ... and counts the fetches."""

    def __init__(self, *, expires_in: int = 7200) -> None:
        self.fetches = 0
        self.expires_in = expires_in
        self._lock = threading.Lock()

    def __call__(self) -> tuple[str, int]:
        with self._lock:
            self.fetches += 1
            return f"token-{self.fetches}", self.expires_in


@pytest.fixture(autouse=True)
def _clean_cache():
    cache.clear()
    yield
    cache.clear()


def test_a_token_is_fetched_once_and_shared_by_every_client():
    issuer = Issuer()
    first = AccessTokens(store=token_store(), key="corp:app", fetch=issuer)
    second = AccessTokens(store=token_store(), key="corp:app", fetch=issuer)  # another process
    assert first.get() == "token-1"
    assert second.get() == "token-1"
    assert issuer.fetches == 1


def test_concurrent_first_calls_fetch_once():
    issuer = Issuer()
    tokens = AccessTokens(store=token_store(), key="corp:app", fetch=issuer)
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(tokens.get())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == ["token-1"] * 8
    assert issuer.fetches == 1


def test_a_refused_token_is_replaced_once_and_the_call_retried_once():
    issuer = Issuer()
    tokens = AccessTokens(store=token_store(), key="corp:app", fetch=issuer)
    seen: list[str] = []

    def send(token: str) -> dict:
        seen.append(token)
        return (
            {"errcode": 42001, "errmsg": "access_token expired"}
            if token == "token-1"
            else {"errcode": 0}
        )

    assert tokens.call(send) == {"errcode": 0}
    assert seen == ["token-1", "token-2"]
    assert tokens.get() == "token-2"

    # A platform that keeps refusing gets one retry, not a loop
    seen.clear()
    assert tokens.call(lambda token: seen.append(token) or {"errcode": 40014}) == {"errcode": 40014}
    assert seen == ["token-2", "token-3"]


def test_a_stale_refresh_keeps_a_token_another_process_already_renewed():
    issuer = Issuer()
    tokens = AccessTokens(store=token_store(), key="corp:app", fetch=issuer)
    assert tokens.get() == "token-1"
    assert tokens.refresh(stale="token-1") == "token-2"
    # A second process refused with token-1 too: it takes token-2, no third fetch
    assert tokens.refresh(stale="token-1") == "token-2"
    assert issuer.fetches == 2


def test_the_token_is_stored_encrypted_and_expires_before_the_platforms_deadline():
    tokens = AccessTokens(store=token_store(), key="corp:app", fetch=Issuer(expires_in=7200))
    tokens.get()
    stored = cache.get("access-token:corp:app")
    assert stored and "token-1" not in stored
    key = cache.make_and_validate_key("access-token:corp:app")
    ttl = cache._cache.get_client(key).ttl(key)
    assert 6000 < ttl <= 7200 - 300


def test_an_endpoint_answering_without_a_token_is_an_error_not_a_cached_blank():
    tokens = AccessTokens(store=token_store(), key="corp:app", fetch=lambda: ("", 7200))
    with pytest.raises(TokenError):
        tokens.get()
    assert cache.get("access-token:corp:app") is None

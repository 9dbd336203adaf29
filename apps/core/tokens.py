"""The shared store behind `wecom.tokens.AccessTokens`: Redis, through Django's cache.

A WeCom or WeChat access token is a bearer credential for the company's account, so it is
kept encrypted like every other secret (Redis dumps and replicas never hold it in clear).
A store that cannot be read behaves as empty: the token is fetched again.
"""

from __future__ import annotations

import logging

from django.core.cache import cache

from apps.core.fields import SecretDecryptError, secret_decrypt, secret_encrypt
from wecom.tokens import TokenStore

logger = logging.getLogger(__name__)

_PREFIX = "access-token:"


class CacheTokenStore:
    def get(self, key: str) -> str | None:
        ciphertext = cache.get(_PREFIX + key)
        if not ciphertext:
            return None
        try:
            return secret_decrypt(ciphertext)
        except SecretDecryptError:
            logger.warning("cached access token %s is unreadable; fetching a new one", key)
            return None

    def set(self, key: str, value: str, ttl: float) -> None:
        cache.set(_PREFIX + key, secret_encrypt(value), timeout=max(int(ttl), 1))

    def delete(self, key: str) -> None:
        cache.delete(_PREFIX + key)


def token_store() -> TokenStore:
    return CacheTokenStore()

"""Who is asking, and how often: the client address behind the proxy, and API rate limits.

Login lockouts are django-axes' (per account and per address, logged and stored); the REST
API is throttled per account and per address by DRF, and every refusal is logged here, so
an attacker guessing or scraping shows up in the log with the address it came from.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.conf import settings
from django.http import HttpRequest
from rest_framework.throttling import AnonRateThrottle, SimpleRateThrottle, UserRateThrottle

if TYPE_CHECKING:  # rest_framework.views imports this module through the settings
    from rest_framework.request import Request
    from rest_framework.views import APIView

logger = logging.getLogger(__name__)


def client_ip(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or the one the trusted proxy put in X-Forwarded-For.

    Only the last `TRUSTED_PROXY_COUNT` hops are the deployment's own proxies; anything to
    their left was written by the client and is never believed.
    """
    remote = request.META.get("REMOTE_ADDR", "") or ""
    hops = settings.TRUSTED_PROXY_COUNT
    if hops < 1:
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
    forwarded = [part for part in forwarded if part]
    return forwarded[-hops] if len(forwarded) >= hops else remote


class _Logged:
    def allow_request(self, request: Request, view: APIView) -> bool:
        allowed = super().allow_request(request, view)  # type: ignore[misc]
        if not allowed:
            user = getattr(request, "user", None)
            logger.warning(
                "API throttled (%s): user=%s address=%s path=%s",
                self.scope,  # type: ignore[attr-defined]
                getattr(user, "username", "") or "-",
                client_ip(request._request),
                request.path,
            )
        return allowed


class AccountRateThrottle(_Logged, UserRateThrottle):
    """Per signed-in account (per address for anonymous callers)."""


class AnonymousRateThrottle(_Logged, AnonRateThrottle):
    """Per address, for callers that are not signed in."""


class AddressRateThrottle(_Logged, SimpleRateThrottle):
    """Per address, signed in or not: many accounts from one address share one budget."""

    scope = "address"

    def get_cache_key(self, request: Request, view: APIView) -> str:
        return self.cache_format % {"scope": self.scope, "ident": client_ip(request._request)}

"""Per-user rate limiting in Redis (fixed one-minute windows, atomic INCR)."""

from __future__ import annotations

import time

from django.core.cache import cache


def rate_limit_exceeded(*, scope: str, limit: int, window_seconds: int = 60) -> bool:
    """Count one hit for `scope`; True when it goes over `limit` (0 = unlimited)."""
    if limit <= 0:
        return False
    window = int(time.time() // window_seconds)
    key = f"ratelimit:{scope}:{window}"
    cache.add(key, 0, timeout=window_seconds * 2)
    return cache.incr(key) > limit

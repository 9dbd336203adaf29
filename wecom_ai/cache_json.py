"""A JSON serializer for Django's Redis cache, so nothing read back from Redis runs code.

Django's default `RedisSerializer` pickles values: anyone who can write a key in Redis
would run code in every process that reads it. JSON only rebuilds data. Integers stay
bare, as in Django's serializer, so `incr()`/`decr()` keep working atomically in Redis.
"""

from __future__ import annotations

import json
from typing import Any


class JSONSerializer:
    """`dumps`/`loads` for `RedisCacheClient`; values must be JSON (dicts, lists, str…)."""

    def __init__(self, protocol: int | None = None) -> None:
        # Django passes no arguments today; accepted so a future call with one still works.
        del protocol

    def dumps(self, obj: Any) -> bytes | int:
        if type(obj) is int:
            return obj
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(self, data: bytes | int) -> Any:
        try:
            return int(data)
        except ValueError:
            # A value that is not JSON (e.g. a pickle planted by someone with access to
            # Redis) raises ValueError instead of being executed.
            return json.loads(data)

"""Creating, revoking and checking API keys; each change writes its operator audit entry.

The key itself exists only in the return value of `api_key_create`: the row keeps its
prefix (to find it and tell keys apart) and a hash (to check it).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Model
from django.utils import timezone

from apps.audit.services.operator_audit import (
    model_snapshot,
    operator_audit_record,
    operator_audited,
)
from apps.bots.models import Bot
from apps.openai_api.models import KEY_MARKER, PREFIX_LENGTH, ApiKey, key_hash

API_KEY_ACTION = "openai_api.api_key"


def api_key_snapshot(obj: Model | None) -> dict[str, Any] | None:
    """The audit's view of a key: everything but its hash."""
    data = model_snapshot(obj)
    if data is not None:
        data.pop("key_hash", None)
    return data


def _new_key() -> tuple[str, str]:
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    return prefix, f"{KEY_MARKER}{prefix}.{secrets.token_urlsafe(32)}"


def api_key_create(
    *,
    name: str,
    bots: Iterable[Bot],
    actor: Any,
    userid: str = "",
    rate_limit_per_minute: int = 60,
    request_id: str = "",
    key: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    """Save a new key with its bots; returns the row and the key, which is never stored.

    `key` is an unsaved row with its fields already set (the admin's form); its bots are
    then set by the caller's `bots`.
    """
    bots = list(bots)
    for _attempt in range(3):
        prefix, raw = _new_key()
        row = key or ApiKey(name=name, userid=userid, rate_limit_per_minute=rate_limit_per_minute)
        row.prefix, row.key_hash = prefix, key_hash(raw)
        if row.created_by_id is None and getattr(actor, "is_authenticated", False):
            row.created_by = actor
        try:
            with operator_audited(
                actor=actor,
                action_prefix=API_KEY_ACTION,
                obj=row,
                snapshot=api_key_snapshot,
                request_id=request_id,
            ):
                row.save()
                row.bots.set(bots)
        except IntegrityError:  # a prefix taken already (one in a trillion): draw again
            row.pk = None
            continue
        return row, raw
    raise RuntimeError("could not draw an unused API key prefix")


def api_key_revoke(*, key: ApiKey, actor: Any, request_id: str = "") -> bool:
    """Revoke the key for good; False when it was revoked already (nothing recorded)."""
    with transaction.atomic():
        before = api_key_snapshot(key)
        if not key.revoke(now=timezone.now()):
            return False
        operator_audit_record(
            actor=actor,
            action=f"{API_KEY_ACTION}.revoke",
            obj=key,
            before=before,
            after=api_key_snapshot(key),
            request_id=request_id,
        )
    return True


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key this string is, or None (unknown, malformed, wrong or revoked).

    Found by its prefix, then compared by hash in constant time, so a wrong key reveals
    nothing through timing but whether its prefix exists (which is not secret).
    """
    if not raw_key.startswith(KEY_MARKER):
        return None
    prefix, dot, _secret = raw_key[len(KEY_MARKER) :].partition(".")
    if not dot or len(prefix) != PREFIX_LENGTH:
        return None
    key = ApiKey.objects.filter(prefix=prefix).first()
    if key is None or not key.matches(raw_key) or key.is_revoked:
        return None
    key.used(now=timezone.now())
    return key


def api_key_bots(*, key: ApiKey) -> list[Bot]:
    """The enabled bots the key may use, by slug (its model list)."""
    return list(key.bots.filter(enabled=True).order_by("slug"))

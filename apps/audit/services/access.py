"""Access log: every record an officer opens or exports, and the reason they gave."""

from __future__ import annotations

from typing import Any

from django.db.models import Model

from apps.audit.models import AccessLog
from apps.audit.services.operator_audit import request_id_current, user_name, user_or_none


def access_log_record(
    *, user: Any, obj: Model, action: str, reason: str, request_id: str = ""
) -> AccessLog:
    """Record that `user` opened (view) or exported `obj`, and why."""
    return AccessLog.objects.create(
        user=user_or_none(user),
        username=user_name(user),
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        reason=reason,
        request_id=request_id or request_id_current(),
    )


def access_log_record_many(
    *, user: Any, objects: list[Model], action: str, reason: str, request_id: str = ""
) -> int:
    """One row per object, in bulk (exports touch thousands of records)."""
    rows = [
        AccessLog(
            user=user_or_none(user),
            username=user_name(user),
            action=action,
            object_type=obj._meta.label_lower,
            object_id=str(obj.pk),
            object_repr=str(obj)[:200],
            reason=reason,
            request_id=request_id or request_id_current(),
        )
        for obj in objects
    ]
    AccessLog.objects.bulk_create(rows, batch_size=1000)
    return len(rows)

"""Access log: every record an officer opens or exports, and the reason they gave."""

from __future__ import annotations

from typing import Any

from django.db.models import Model

from apps.audit.models import AccessLog
from apps.audit.selectors import access_reason_recent
from apps.audit.services.operator_audit import request_id_current, user_name, user_or_none


def access_log_record(
    *,
    user: Any,
    obj: Model,
    action: str,
    reason: str,
    request_id: str = "",
    opened_with: AccessLog | None = None,
) -> AccessLog:
    """Record that `user` opened (view) or exported `obj`, and why.

    `opened_with` is the row where the reason was given, when it was given for another
    record (the conversation that showed this turn).
    """
    return AccessLog.objects.create(
        opened_with=opened_with,
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
    *,
    user: Any,
    objects: list[Model],
    action: str,
    reason: str,
    request_id: str = "",
    opened_with: AccessLog | None = None,
) -> int:
    """One row per object, in bulk (exports touch thousands of records), each linked to
    the row where the reason was given (`opened_with`), when there is one."""
    rows = [
        AccessLog(
            opened_with=opened_with,
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


def access_log_reuse(
    *, user: Any, obj: Model, reason_if_none: str = "", request_id: str = ""
) -> AccessLog | None:
    """Log another view of `obj` under the reason `user` gave on its page a moment ago.

    A live view (WebSocket) cannot ask for a reason itself, so it opens only after the
    record's page asked for one; `reason_if_none` stands in where no reason is asked
    (superusers). None means: no reason, do not show the record.
    """
    recent = access_reason_recent(user=user, obj=obj)
    reason = recent.reason if recent is not None else reason_if_none
    if not reason:
        return None
    return access_log_record(
        user=user, obj=obj, action=AccessLog.Action.VIEW, reason=reason, request_id=request_id
    )

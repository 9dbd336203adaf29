"""Who may do what: users, groups and their permissions, saved with their operator audit.

Passwords appear as "(set)" or "(changed)", never as their hash. Permissions are recorded
by name as well as by id, so an entry still reads right after a permission is renamed.
Review scope is granted elsewhere, by `review_scope_set`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Model, QuerySet

from apps.audit.services.operator_audit import (
    model_delete_audited,
    model_save_audited,
    model_snapshot,
    operator_audit_record,
)

USER_ACTION = "auth.user"
GROUP_ACTION = "auth.group"


def _permission_names(permissions: QuerySet) -> list[str]:
    return sorted(f"{p.content_type.app_label}.{p.codename}" for p in permissions)


def user_snapshot(obj: Model | None) -> dict[str, Any] | None:
    data = model_snapshot(obj)
    if data is None or obj is None:
        return data
    if "password" in data:
        data["password"] = "(set)" if data["password"] else ""  # never the hash
    if obj.pk is not None:
        data["permission_names"] = _permission_names(
            obj.user_permissions.select_related("content_type")  # type: ignore[attr-defined]
        )
        data["group_names"] = sorted(obj.groups.values_list("name", flat=True))  # type: ignore[attr-defined]
    return data


def group_snapshot(obj: Model | None) -> dict[str, Any] | None:
    data = model_snapshot(obj)
    if data is not None and obj is not None and obj.pk is not None:
        data["permission_names"] = _permission_names(
            obj.permissions.select_related("content_type")  # type: ignore[attr-defined]
        )
    return data


def user_save(
    *, user: Any, actor: Any, related: Callable[[], None] | None = None, request_id: str = ""
) -> Any:
    """Save a user; `related` saves groups and permissions inside the same audited change."""
    return model_save_audited(
        obj=user, actor=actor, action_prefix=USER_ACTION, snapshot=user_snapshot,
        related=related, request_id=request_id,
    )  # fmt: skip


def user_delete(*, user: Any, actor: Any, request_id: str = "") -> None:
    model_delete_audited(
        obj=user, actor=actor, action_prefix=USER_ACTION, snapshot=user_snapshot,
        request_id=request_id,
    )  # fmt: skip


def user_password_set(*, user: Any, actor: Any, request_id: str = "") -> None:
    """Record that a password changed (the caller has set it); never how."""
    operator_audit_record(
        actor=actor,
        action=f"{USER_ACTION}.password_set",
        obj=user,
        before={"password": "(old)"},
        after={"password": "(changed)"},
        request_id=request_id,
    )


def group_save(
    *, group: Group, actor: Any, related: Callable[[], None] | None = None, request_id: str = ""
) -> Group:
    model_save_audited(
        obj=group, actor=actor, action_prefix=GROUP_ACTION, snapshot=group_snapshot,
        related=related, request_id=request_id,
    )  # fmt: skip
    return group


def group_delete(*, group: Group, actor: Any, request_id: str = "") -> None:
    model_delete_audited(
        obj=group, actor=actor, action_prefix=GROUP_ACTION, snapshot=group_snapshot,
        request_id=request_id,
    )  # fmt: skip


def superuser_ensure(*, username: str, password: str | None, actor: Any) -> tuple[Any, str]:
    """The superuser `username`, created if missing; `password` (if any) set on it.

    Returns the user and what happened: "created", "password_set" or "unchanged".
    """
    User = get_user_model()
    with transaction.atomic():
        user = User._default_manager.filter(username=username).first()
        if user is None:
            user = User(username=username, email="", is_staff=True, is_superuser=True)
            user.set_password(password)
            user_save(user=user, actor=actor)
            return user, "created"
        if not password:
            return user, "unchanged"
        user.set_password(password)
        user.save(update_fields=["password"])
        user_password_set(user=user, actor=actor)
        return user, "password_set"

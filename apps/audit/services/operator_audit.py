"""Operator audit: who changed what, with the state before and after.

Callers record inside the transaction of the change itself, so a rolled-back change leaves
no entry and a committed one always has its entry. Secrets appear as "(set)"/"" and a
short keyed fingerprint (so a rotation shows as a change), never as their value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models import Model

from apps.audit.models import OperatorAuditEntry
from apps.audit.services.ledger import content_fingerprint
from apps.core.fields import EncryptedTextField, is_undecryptable
from wecom_ai.request_id import current_request_id

SECRET_SET = "(set)"  # noqa: S105 - a placeholder shown instead of a secret

Snapshot = Callable[[Model | None], dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class SystemActor:
    """Who acted when no user did: a command or task, shown by its label in the audit list.

    The entry's actor stays empty (there is no user to link); `actor_username` holds the
    label, e.g. `system:demo_setup`, so the list tells the commands apart.
    """

    label: str


def command_actor(*, command: str, username: str | None = None) -> Any:
    """The actor a management command records: the user named by `--actor`, or the system.

    Raises LookupError for an unknown username, so a typo never records the system instead.
    """
    if not username:
        return SystemActor(f"system:{command}")
    user = get_user_model()._default_manager.filter(username=username).first()
    if user is None:
        raise LookupError(f"no user named {username!r}")
    return user


def user_name(user: Any) -> str:
    if isinstance(user, SystemActor):
        return user.label[:150]
    if user is None or not getattr(user, "is_authenticated", False):
        return ""
    return user.get_username()


def user_or_none(user: Any) -> Any:
    return user if user is not None and getattr(user, "is_authenticated", False) else None


def secret_fingerprint(value: str | None) -> str:
    """A short keyed SHA-256 of a secret: equal values match, the value cannot be guessed.

    "" when unset, "undecryptable" when no configured key opens the stored value.
    """
    if is_undecryptable(value):
        return "undecryptable"
    if not value:
        return ""
    return "hmac-sha256:" + (content_fingerprint(value) or "")[:16]


def model_snapshot(obj: Model | None) -> dict[str, Any] | None:
    """Field values as JSON-ready data; many-to-many fields as sorted primary keys."""
    if obj is None:
        return None
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        value = field.value_from_object(obj)
        if isinstance(field, EncryptedTextField):
            # Never the value; a keyed fingerprint shows that (and when) it changed.
            data[f"{field.attname}_fingerprint"] = secret_fingerprint(value)
            value = SECRET_SET if value or is_undecryptable(value) else ""
        elif isinstance(field, models.FileField):
            value = value.name if value else ""
        data[field.attname] = value
    if obj.pk is not None:
        for field in obj._meta.many_to_many:
            data[field.name] = sorted(getattr(obj, field.name).values_list("pk", flat=True))
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def snapshot_changes(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Keep only the keys that changed (all keys on create and delete)."""
    if before is None or after is None:
        return (dict(before) if before else None, dict(after) if after else None)
    keys = [key for key in after if before.get(key) != after.get(key)]
    keys += [key for key in before if key not in after]
    return ({k: before.get(k) for k in keys}, {k: after.get(k) for k in keys})


def operator_audit_record(
    *,
    actor: Any,
    action: str,
    obj: Model | None = None,
    object_type: str = "",
    object_id: str = "",
    object_repr: str = "",
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    request_id: str = "",
    only_changes: bool = True,
) -> OperatorAuditEntry:
    """Write one operator audit entry; `actor` None (or anonymous) means the system."""
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
        object_repr = object_repr or str(obj)
    if only_changes:
        before, after = snapshot_changes(before, after)
    payload = json.loads(json.dumps({"before": before, "after": after}, cls=DjangoJSONEncoder))
    return OperatorAuditEntry.objects.create(
        actor=user_or_none(actor),
        actor_username=user_name(actor),
        action=action,
        object_type=object_type,
        object_id=object_id,
        object_repr=object_repr[:200],
        before=payload["before"],
        after=payload["after"],
        request_id=request_id or request_id_current(),
    )


@contextmanager
def operator_audited(
    *,
    actor: Any,
    action_prefix: str,
    obj: Model,
    snapshot: Snapshot = model_snapshot,
    request_id: str = "",
) -> Iterator[dict[str, Any] | None]:
    """Audit the save done in the `with` block as one entry, in the same transaction.

    The state before is read from the database (the caller's instance may already hold the
    new values); it is what the block gets. The entry is `<prefix>.create` when there was
    no stored row, else `<prefix>.update`.
    """
    with transaction.atomic():
        stored = None
        if obj.pk is not None:
            stored = type(obj)._default_manager.select_for_update().filter(pk=obj.pk).first()
        before = snapshot(stored) if stored is not None else None
        yield before
        operator_audit_record(
            actor=actor,
            action=f"{action_prefix}.{'create' if stored is None else 'update'}",
            obj=obj,
            before=before,
            after=snapshot(obj),
            request_id=request_id,
        )


def model_save_audited(
    *,
    obj: Model,
    actor: Any,
    action_prefix: str,
    snapshot: Snapshot = model_snapshot,
    related: Callable[[], None] | None = None,
    request_id: str = "",
) -> Model:
    """Save a row that has no service of its own; `related` saves its many-to-many fields and
    inlines (the admin's `save_related`) inside the same audited change."""
    with operator_audited(
        actor=actor, action_prefix=action_prefix, obj=obj, snapshot=snapshot, request_id=request_id
    ):
        obj.save()
        if related is not None:
            related()
    return obj


def model_delete_audited(
    *,
    obj: Model,
    actor: Any,
    action_prefix: str,
    snapshot: Snapshot = model_snapshot,
    request_id: str = "",
) -> None:
    """Delete a row with its `<prefix>.delete` entry holding the state it had."""
    with transaction.atomic():
        operator_audit_record(
            actor=actor,
            action=f"{action_prefix}.delete",
            obj=obj,
            before=snapshot(obj),
            request_id=request_id,
        )
        obj.delete()


def request_id_current() -> str:
    value = current_request_id()
    return "" if value == "-" else value

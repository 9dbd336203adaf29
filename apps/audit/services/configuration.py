"""Audit configuration operators edit: policies (with their rules) and archive sources.

Each save writes one operator audit entry in its own transaction, whoever calls it (the
admin today, a command or the API tomorrow). Word lists, rule imports and review scope
have their services in `policy` and `review`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import Model

from apps.audit.models import (
    Action,
    ArchiveKey,
    ArchiveSource,
    AuditPolicy,
    PolicyWordList,
    RegexRule,
    SensitiveWordList,
)
from apps.audit.services.operator_audit import (
    model_delete_audited,
    model_save_audited,
    model_snapshot,
    operator_audited,
)
from apps.audit.services.policy import regex_rules_import, word_list_snapshot

POLICY_ACTION = "audit.policy"
WORD_LIST_ACTION = "audit.word_list"
ARCHIVE_SOURCE_ACTION = "audit.archive_source"


def policy_snapshot(obj: Model | None) -> dict[str, Any] | None:
    """The policy with its rules, so an inline change shows in the policy's entry."""
    snapshot = model_snapshot(obj)
    if snapshot is not None and obj is not None and obj.pk is not None:
        snapshot["word_list_rules"] = [
            {"word_list": rule.word_list_id, "action": rule.action}
            for rule in PolicyWordList.objects.filter(policy=obj).order_by("word_list_id")
        ]
        snapshot["regex_rules"] = [
            {"pattern": rule.pattern, "action": rule.action}
            for rule in RegexRule.objects.filter(policy=obj).order_by("id")
        ]
    return snapshot


def policy_save(
    *,
    policy: AuditPolicy,
    actor: Any,
    related: Callable[[], None] | None = None,
    regex_import: str = "",
    regex_import_action: str = Action.FLAG,
    request_id: str = "",
) -> AuditPolicy:
    """Save a policy with its rules (`related`); the entry's "after" has every rule.

    `regex_import` (file text) is imported after the rules, with its own
    `audit.policy.regex_import` entry, and shows in the policy's entry too.
    """
    with operator_audited(
        actor=actor,
        action_prefix=POLICY_ACTION,
        obj=policy,
        snapshot=policy_snapshot,
        request_id=request_id,
    ):
        policy.save()
        if related is not None:
            related()
        if regex_import:
            regex_rules_import(
                policy=policy,
                text=regex_import,
                default_action=regex_import_action,
                actor=actor,
                request_id=request_id,
            )
    return policy


def policy_delete(*, policy: AuditPolicy, actor: Any, request_id: str = "") -> None:
    model_delete_audited(
        obj=policy,
        actor=actor,
        action_prefix=POLICY_ACTION,
        snapshot=policy_snapshot,
        request_id=request_id,
    )


def word_list_delete(*, word_list: SensitiveWordList, actor: Any, request_id: str = "") -> None:
    model_delete_audited(
        obj=word_list,
        actor=actor,
        action_prefix=WORD_LIST_ACTION,
        snapshot=word_list_snapshot,
        request_id=request_id,
    )


def archive_source_snapshot(obj: Model | None) -> dict[str, Any] | None:
    """The source with its key versions (by fingerprint; private keys never appear)."""
    snapshot = model_snapshot(obj)
    if snapshot is not None and obj is not None and obj.pk is not None:
        snapshot["keys"] = [
            {"publickey_ver": key.publickey_ver, "fingerprint": key.fingerprint}
            for key in ArchiveKey.objects.filter(source=obj).order_by("publickey_ver")
        ]
    return snapshot


def archive_source_save(
    *,
    source: ArchiveSource,
    actor: Any,
    related: Callable[[], None] | None = None,
    request_id: str = "",
) -> ArchiveSource:
    """Save a source's configuration and keys (`related`) with one entry."""
    model_save_audited(
        obj=source,
        actor=actor,
        action_prefix=ARCHIVE_SOURCE_ACTION,
        snapshot=archive_source_snapshot,
        related=related,
        request_id=request_id,
    )
    return source


def archive_source_delete(*, source: ArchiveSource, actor: Any, request_id: str = "") -> None:
    model_delete_audited(
        obj=source,
        actor=actor,
        action_prefix=ARCHIVE_SOURCE_ACTION,
        snapshot=archive_source_snapshot,
        request_id=request_id,
    )

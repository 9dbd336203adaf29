"""Reads that are more than a filter: what an officer may see, which policies apply where.

Officers are assigned to bots and archive sources with guardian object permissions
(`bots.review_bot`, `audit.review_archivesource`), directly or through a group; cases,
archived messages and exports are scoped by those assignments (bot transcripts by
`apps.bots.transcripts`, on the same assignments). A global grant of the same
permission (or superuser) sees everything.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db.models import Model, Q, QuerySet
from django.utils import timezone
from guardian.models import GroupObjectPermission
from guardian.shortcuts import get_objects_for_user, get_users_with_perms

from apps.audit.models import (
    AccessLog,
    ArchivedMessage,
    ArchiveQuarantine,
    ArchiveSource,
    AuditPolicy,
    ReviewCase,
)
from apps.audit.registry import bot_side_get

REVIEW_BOT_PERM = "bots.review_bot"
REVIEW_SOURCE_PERM = "audit.review_archivesource"


def _codename(perm: str) -> str:
    # Bare codenames with `klass` make guardian take the content type from the model
    # instead of looking the permission row up (and caching its content type).
    return perm.split(".", 1)[1]


def bots_reviewable_by(*, user: Any) -> QuerySet[Any]:
    """The bots assigned to `user` (the bots side registers the model, see `registry`)."""
    return get_objects_for_user(user, _codename(REVIEW_BOT_PERM), klass=bot_side_get().bot_model)


def sources_reviewable_by(*, user: Any) -> QuerySet[ArchiveSource]:
    return get_objects_for_user(user, _codename(REVIEW_SOURCE_PERM), klass=ArchiveSource)


def officers_assigned_to(*, target: Model, with_groups: bool = True) -> QuerySet[Any]:
    """The officers assigned to a bot or archive source (shown beside it, so admins see
    who reviews it without opening every officer's assignments)."""
    perm = REVIEW_SOURCE_PERM if isinstance(target, ArchiveSource) else REVIEW_BOT_PERM
    return get_users_with_perms(
        target,
        only_with_perms_in=[_codename(perm)],
        with_superusers=False,
        with_group_users=with_groups,
    ).order_by("username")


def scope_permissions() -> QuerySet[Permission]:
    """The permissions that make up an officer's scope (global grant: every bot or source)."""
    return Permission.objects.filter(
        Q(content_type__app_label="bots", codename=_codename(REVIEW_BOT_PERM))
        | Q(content_type__app_label="audit", codename=_codename(REVIEW_SOURCE_PERM))
    )


def scope_groups() -> QuerySet[Group]:
    """Groups whose members get review scope, globally or on some bots or sources."""
    permissions = scope_permissions()
    return Group.objects.filter(
        Q(permissions__in=permissions)
        | Q(pk__in=GroupObjectPermission.objects.filter(permission__in=permissions).values("group"))
    ).distinct()


def review_cases_for_user(*, user: Any) -> QuerySet[ReviewCase]:
    """Cases of the bots and archive sources assigned to `user`."""
    cases = ReviewCase.objects.all()
    if user.is_superuser:
        return cases
    return cases.filter(
        Q(bot__in=bots_reviewable_by(user=user))
        | Q(archive_source__in=sources_reviewable_by(user=user))
    )


def archived_messages_for_user(*, user: Any) -> QuerySet[ArchivedMessage]:
    messages = ArchivedMessage.objects.all()
    if user.is_superuser:
        return messages
    return messages.filter(source__in=sources_reviewable_by(user=user))


# A reason given on a record's page also covers its live view for this long.
ACCESS_REASON_REUSE = timedelta(minutes=30)


def access_reason_recent(
    *, user: Any, obj: Model, within: timedelta = ACCESS_REASON_REUSE
) -> AccessLog | None:
    """The latest access-log row of `user` opening `obj` within `within`, if any."""
    return (
        AccessLog.objects.filter(
            user_id=user.pk,
            action=AccessLog.Action.VIEW,
            object_type=obj._meta.label_lower,
            object_id=str(obj.pk),
            created_at__gte=timezone.now() - within,
        )
        .order_by("-created_at")
        .first()
    )


def access_reason_inherited(
    *, user: Any, obj: Model, within: timedelta = ACCESS_REASON_REUSE
) -> AccessLog | None:
    """The entry where `user` gave a reason for another record whose page showed `obj`
    (the conversation around a turn or a message), given within `within`, if any.

    A reason given for `obj` itself opens its page once; one given for its conversation
    covers each record the conversation showed, for `within` from when it was given.
    """
    shown = (
        AccessLog.objects.filter(
            user_id=user.pk,
            action=AccessLog.Action.VIEW,
            object_type=obj._meta.label_lower,
            object_id=str(obj.pk),
            opened_with__isnull=False,
            opened_with__created_at__gte=timezone.now() - within,
        )
        .select_related("opened_with")
        .order_by("-created_at")
        .first()
    )
    return shown.opened_with if shown is not None else None


def quarantined_for_user(*, user: Any) -> QuerySet[ArchiveQuarantine]:
    """Quarantined records of the archive sources assigned to `user`."""
    records = ArchiveQuarantine.objects.all()
    if user.is_superuser:
        return records
    return records.filter(source__in=sources_reviewable_by(user=user))


def policies_for_bot(*, bot: Model) -> list[AuditPolicy]:
    return list(AuditPolicy.objects.filter(enabled=True, bots=bot))


def policies_for_source(*, source: ArchiveSource) -> list[AuditPolicy]:
    return list(AuditPolicy.objects.filter(enabled=True, archive_sources=source))


def archive_conversation(*, message: ArchivedMessage, around: int = 20) -> list[ArchivedMessage]:
    """The messages of the same chat just before and after `message`, oldest first."""
    chat = ArchivedMessage.objects.filter(source_id=message.source_id)
    if message.roomid:
        chat = chat.filter(roomid=message.roomid)
    else:
        people = {message.sender, *message.tolist}
        chat = chat.filter(roomid="", sender__in=people, tolist__overlap=list(people))
    before = list(chat.filter(msgtime__lt=message.msgtime).order_by("-msgtime", "-seq")[:around])
    after = list(
        chat.filter(msgtime__gte=message.msgtime)
        .exclude(pk=message.pk)
        .order_by("msgtime", "seq")[:around]
    )
    return [*reversed(before), message, *after]

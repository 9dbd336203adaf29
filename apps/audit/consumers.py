"""WebSocket feed of newly flagged items for officers (see `apps.audit.streams`).

The same boundary as the review-case list: `audit.view_reviewcase` and the officer's
assigned bots and archive sources. The groups are joined at connect, and every notice is
checked against the officer's current scope before it is sent, so an assignment (or the
account) withdrawn while the page is open stops the feed at the next notice.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth import get_user_model

from apps.audit import selectors
from apps.audit.streams import ALL_GROUP, bot_group, source_group


def _may_watch(user: Any) -> bool:
    return (
        user is not None
        and user.is_authenticated
        and user.is_active
        and user.is_staff
        and user.has_perm("audit.view_reviewcase")
    )


def _groups_for(user: Any) -> list[str]:
    if not _may_watch(user):
        return []
    if user.is_superuser:
        return [ALL_GROUP]
    bots = selectors.bots_reviewable_by(user=user).values_list("pk", flat=True)
    sources = selectors.sources_reviewable_by(user=user).values_list("pk", flat=True)
    return [*(bot_group(pk) for pk in bots), *(source_group(pk) for pk in sources)]


def _still_in_scope(user_id: int, case: dict[str, Any]) -> bool:
    """Re-read the account and its assignments: they may have changed since connect."""
    user = get_user_model().objects.filter(pk=user_id).first()
    if not _may_watch(user):
        return False
    if user.is_superuser:
        return True
    if case.get("bot") and selectors.bots_reviewable_by(user=user).filter(pk=case["bot"]).exists():
        return True
    source = case.get("archive_source")
    return bool(source) and selectors.sources_reviewable_by(user=user).filter(pk=source).exists()


class FlaggedFeedConsumer(AsyncJsonWebsocketConsumer):
    """Joins the groups of the officer's scope at connect; each notice is re-checked."""

    async def connect(self) -> None:
        self.groups_joined: list[str] = []
        user = self.scope.get("user")
        groups = await sync_to_async(_groups_for)(user)
        if not groups:
            await self.close(code=4403)
            return
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = groups
        self.user_id = user.pk
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def case_flagged(self, event: dict[str, Any]) -> None:
        if not await sync_to_async(_still_in_scope)(self.user_id, event["case"]):
            await self.close(code=4403)
            return
        await self.send_json(event["case"])

"""WebSocket feed of newly flagged items for officers (see `apps.audit.streams`)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.audit import selectors
from apps.audit.streams import ALL_GROUP, bot_group, source_group


def _groups_for(user: Any) -> list[str]:
    if user.is_superuser:
        return [ALL_GROUP]
    bots = selectors.bots_reviewable_by(user=user).values_list("pk", flat=True)
    sources = selectors.sources_reviewable_by(user=user).values_list("pk", flat=True)
    return [*(bot_group(pk) for pk in bots), *(source_group(pk) for pk in sources)]


class FlaggedFeedConsumer(AsyncJsonWebsocketConsumer):
    """Joins the groups of the officer's scope at connect; the scope is not re-read later."""

    async def connect(self) -> None:
        self.groups_joined: list[str] = []
        user = self.scope.get("user")
        if user is None or not user.is_active or not user.is_staff:
            await self.close(code=4403)
            return
        groups = await sync_to_async(_groups_for)(user)
        if not groups:
            await self.close(code=4403)
            return
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = groups
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def case_flagged(self, event: dict[str, Any]) -> None:
        await self.send_json(event["case"])

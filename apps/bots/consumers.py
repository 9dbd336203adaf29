"""Live view of a turn being answered, for staff watching in the admin."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from apps.bots.streams import turn_group


class TurnStreamConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_active or not user.is_staff:
            await self.close(code=4403)
            return
        has_perm = await self._can_view(user)
        if not has_perm:
            await self.close(code=4403)
            return
        self.group = turn_group(int(self.scope["url_route"]["kwargs"]["turn_id"]))
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def _can_view(self, user: Any) -> bool:
        from asgiref.sync import sync_to_async

        return await sync_to_async(user.has_perm)("bots.view_turn")

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def turn_update(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {"content": event["content"], "finish": event["finish"], "status": event["status"]}
        )

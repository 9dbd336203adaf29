"""Live view of a turn being answered, for staff watching in the admin.

The same boundary as the turn's admin page: `bots.view_turn` and the turn's bot assigned
to the officer (`turns_for_user`), and every subscription is written to the access log
under the reason given when the page was opened. Anything else is refused (HTTP 403)
before joining the turn's group, so turn ids cannot be probed.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils.translation import gettext

from apps.audit.services.access import access_log_reuse
from apps.bots.streams import turn_group
from apps.bots.transcripts import turn_for_user


def turn_watch_open(*, user: Any, turn_id: int) -> bool:
    """Whether `user` may follow turn `turn_id` live; logs the access when they may."""
    if user is None or not user.is_authenticated:
        return False
    turn = turn_for_user(user=user, turn_id=turn_id)
    if turn is None:
        return False
    logged = access_log_reuse(
        user=user,
        obj=turn,
        # The admin does not ask superusers either, but still logs their opening.
        reason_if_none=gettext("Opened by a superuser (no reason asked).")
        if user.is_superuser
        else "",
    )
    return logged is not None


class TurnStreamConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        turn_id = int(self.scope["url_route"]["kwargs"]["turn_id"])
        if not await sync_to_async(turn_watch_open)(user=self.scope.get("user"), turn_id=turn_id):
            await self.close(code=4403)
            return
        self.group = turn_group(turn_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def turn_update(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {"content": event["content"], "finish": event["finish"], "status": event["status"]}
        )

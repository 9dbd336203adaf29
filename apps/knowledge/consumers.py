"""Live ingestion progress of a document, for staff watching its admin pages."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer


def document_group(document_id: int) -> str:
    return f"kb.document.{document_id}"


class DocumentProgressConsumer(AsyncJsonWebsocketConsumer):
    """Relays `document.progress` events the ingestion worker sends to the document's group."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_active or not user.is_staff:
            await self.close(code=4403)
            return
        if not await sync_to_async(user.has_perm)("knowledge.view_document"):
            await self.close(code=4403)
            return
        self.group = document_group(int(self.scope["url_route"]["kwargs"]["document_id"]))
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def document_progress(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {
                key: event[key]
                for key in ("status", "label", "progress", "stage", "version", "error")
            }
        )

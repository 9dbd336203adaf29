"""Admins watch a turn being answered live over a WebSocket served by the real ASGI app."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from django.conf import settings
from django.test import Client
from django.utils import timezone

from apps.bots.models import Conversation, Turn
from apps.bots.streams import stream_publish

pytestmark = pytest.mark.django_db(transaction=True)


async def _watch(base: str, cookie: str | None, turn_id: int) -> list[dict]:
    headers = {"Origin": f"http://{base}"}
    if cookie:
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={cookie}"
    received = []
    async with websockets.connect(
        f"ws://{base}/ws/turns/{turn_id}/", additional_headers=headers, open_timeout=10
    ) as socket_:
        await asyncio.sleep(0.3)  # the consumer joins the group right after the handshake
        await asyncio.to_thread(
            stream_publish, turn_id, content="年假五天", finish=True, status="answered"
        )
        received.append(json.loads(await asyncio.wait_for(socket_.recv(), timeout=10)))
    return received


def test_staff_see_the_answer_stream_live(asgi_server, admin_user, bot):
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="wangwu")
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid="m-live",
        stream_id="s-live",
        question="年假几天？",
        status=Turn.Status.GENERATING,
        received_at=timezone.now(),
    )
    client = Client()
    client.force_login(admin_user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    received = asyncio.run(_watch(asgi_server, cookie, turn.pk))
    assert received == [{"content": "年假五天", "finish": True, "status": "answered"}]


def test_anonymous_websocket_is_closed(asgi_server):
    # The consumer closes before accepting, which the server turns into HTTP 403.
    with pytest.raises(websockets.exceptions.InvalidStatus) as excinfo:
        asyncio.run(_watch(asgi_server, None, 42))
    assert excinfo.value.response.status_code == 403


def test_websocket_from_a_foreign_origin_is_refused(asgi_server, admin_user):
    async def connect() -> None:
        async with websockets.connect(
            f"ws://{asgi_server}/ws/turns/1/", additional_headers={"Origin": "http://evil.example"}
        ):
            pass

    with pytest.raises(websockets.exceptions.InvalidStatus):
        asyncio.run(connect())

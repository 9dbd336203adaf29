"""The mini-program chat streamed as server-sent events from the real ASGI app and worker."""

from __future__ import annotations

import json

import httpx
import pytest

from apps.bots.models import Turn
from apps.wechat.auth import tokens_issue
from apps.wechat.models import MiniProgram

pytestmark = pytest.mark.slow


def _events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_chat_streams_the_answer_then_the_turn(asgi_server, start_worker, bot):
    bot.max_tokens = 16
    bot.save(update_fields=["max_tokens"])
    program = MiniProgram.objects.create(name="HR小程序", app_id="wxMini1", app_secret="s")
    program.bots.add(bot)
    start_worker()
    access = tokens_issue(app_id="wxMini1", openid="oUser1")["access"]
    with httpx.stream(
        "POST",
        f"http://{asgi_server}/api/mp/chat",
        json={"bot": bot.slug, "message": "What is an annual leave?"},
        headers={"Authorization": f"Bearer {access}"},
        timeout=300,
        trust_env=False,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    names = [name for name, _data in events]
    assert names[0] == "turn" and names[-1] == "done"
    assert "delta" in names
    streamed = "".join(data["text"] for name, data in events if name == "delta")
    done = events[-1][1]
    turn = Turn.objects.select_related("conversation").get(pk=done["turn"])
    assert done["status"] == Turn.Status.ANSWERED == turn.status
    assert done["answer"] == turn.answer and streamed.strip() == turn.answer.strip()
    assert turn.channel == Turn.Channel.MINIPROGRAM
    assert (turn.conversation.external, turn.conversation.userid) == (True, "oUser1")

"""A long answer on the long connection: throttled frames, the final one, then the rest by push.

The real worker and model write a long answer; the stream's deadline is shortened so that
the stream ends (with its "the full answer follows" note) while the model is still writing,
as a 6-minute answer would in production. The connector (in this process) must keep every
frame inside WeCom's 30 a minute per conversation, get the final frame through, and push
the whole answer with `aibot_send_msg` once it is written.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from apps.bots.connector import Connector, ConnectorSettings
from apps.bots.models import Bot, Turn
from wecom.longconn.frames import CMD_SEND_MSG
from wecom.longconn.throttle import RateLimits
from wecom.simulator_longconn import LongConnSimulator

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BOT_ID = "aib-long-answer"
SECRET = "long-answer-secret"


def test_answer_past_the_stream_deadline_ends_and_continues_by_push(
    make_bot, model_profile, start_worker
):
    # Room for a 2,000-token answer after the prompt (the test profile's window is 2,048).
    model_profile.pk, model_profile.name, model_profile.context_size = None, "4k", 4096
    model_profile.save()
    make_bot(
        model_profile=model_profile,
        connection_mode=Bot.ConnectionMode.LONG_CONNECTION,
        aibotid=BOT_ID,
        longconn_secret=SECRET,
        token="",
        encoding_aes_key="",
        max_tokens=2000,
        system_prompt="You are a storyteller. You write very long, detailed stories.",
    )
    start_worker(WECOM_STREAM_DEADLINE_SECONDS="6", WECOM_STREAM_FLUSH_SECONDS="0.1")
    simulator = LongConnSimulator(bots={BOT_ID: SECRET})  # WeCom's real 30/min and 1,000/h
    pushed = {}

    async def main() -> None:
        async with simulator:
            stop = asyncio.Event()
            config = ConnectorSettings(url=simulator.url, poll_seconds=0.2, forward_seconds=0.1)
            task = asyncio.create_task(Connector(config, holder="test").run(stop))
            try:
                await simulator.wait_until(lambda: simulator.subscribed(BOT_ID), 30)
                frame = await simulator.push_text(
                    BOT_ID,
                    "Write a very long story about a dragon who learns to bake bread. "
                    "Use at least 1500 words.",
                    userid="zhangsan",
                )
                pushed["frame"] = frame
                await simulator.wait_finished(frame.req_id, timeout=60)
                deadline = time.monotonic() + 400
                while not await sync_to_async(_delivered)(frame.body["msgid"]):
                    assert time.monotonic() < deadline, "the continuation never went out"
                    await asyncio.sleep(0.2)
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
                await sync_to_async(connections.close_all)()

    asyncio.run(main())

    frame = pushed["frame"]
    turn = Turn.objects.get(msgid=frame.body["msgid"])
    assert turn.status == Turn.Status.ANSWERED, turn.error
    assert turn.fixed_reply_reason == ""
    assert turn.completion_tokens > 300, turn.completion_tokens  # written well past the deadline
    replies = simulator.replies(frame.req_id)
    finals = [r for r in replies if r.errcode == 0 and r.frame.body["stream"].get("finish")]
    assert len(finals) == 1
    assert "完整" in finals[0].frame.body["stream"]["content"]  # "the full answer follows"
    # The whole answer arrives by push, in order, after the final frame.
    sent = [r for r in simulator.accepted_frames("zhangsan") if r.frame.cmd == CMD_SEND_MSG]
    assert sent and sent[0].at >= finals[0].at
    assert "".join(r.frame.body["markdown"]["content"] for r in sent) == turn.answer.strip()
    assert turn.error == ""
    # Nothing was refused, and no 60-second window carried more than 30 messages.
    assert [r.errcode for r in replies if r.errcode != 0] == []
    accepted = simulator.accepted_frames("zhangsan")
    limits = RateLimits()
    assert len(accepted) <= limits.per_hour
    for i, first in enumerate(accepted):
        window = [r for r in accepted[i:] if r.at - first.at < 60.0]
        assert len(window) <= limits.per_minute


def _delivered(msgid: str) -> bool:
    return Turn.objects.filter(msgid=msgid, longconn_delivered_at__isnull=False).exists()

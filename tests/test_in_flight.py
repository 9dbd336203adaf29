"""WeCom's three messages in flight per user and bot: a fourth gets a clear reply, never lost.

Both doors go through `mention_receive`, which counts the user's messages still awaiting an
answer under a per-(bot, user) advisory lock. Callback mode through the callback simulator
(no worker: the first three stay queued); the long connection end to end with the real
worker, model and connector against `LongConnSimulator`, which refuses a fourth open stream.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from apps.bots.connector import Connector, ConnectorSettings
from apps.bots.models import Bot, Turn
from wecom.simulator_longconn import MAX_IN_FLIGHT_PER_USER, LongConnSimulator

pytestmark = pytest.mark.django_db(transaction=True)

BOT_ID = "aib-in-flight"
SECRET = "in-flight-secret-value"


def test_callback_fourth_message_at_once_gets_a_clear_reply(make_bot, simulator_for):
    bot = make_bot(rate_limit_per_minute=50)
    sim = simulator_for(bot)
    messages = [sim.text_message(f"问题{i}", userid="zhangsan") for i in range(4)]
    barrier = threading.Barrier(4)
    replies: list[dict] = []

    def deliver(message: dict) -> None:
        barrier.wait()
        replies.append(sim.decrypt_reply(sim.post_message(message)))

    threads = [threading.Thread(target=deliver, args=(m,)) for m in messages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Exactly three streams stay open; the fourth is answered at once, whatever won the race.
    assert sorted(r["stream"]["finish"] for r in replies) == [False, False, False, True]
    refused = next(r for r in replies if r["stream"]["finish"])
    turn = Turn.objects.get(stream_id=refused["stream"]["id"])
    assert (turn.status, turn.rejection_reason) == (Turn.Status.REJECTED, "in_flight")
    assert refused["stream"]["content"] == turn.answer and "3" in turn.answer
    assert Turn.objects.filter(status=Turn.Status.QUEUED).count() == 3
    # Another employee is not held up by zhangsan's three.
    other = sim.decrypt_reply(sim.post_message(sim.text_message("问题", userid="lisi")))
    assert other["stream"]["finish"] is False
    # Once one of the three has its answer, zhangsan may ask again.
    first = Turn.objects.filter(status=Turn.Status.QUEUED, conversation__userid="zhangsan")[0]
    Turn.objects.filter(pk=first.pk).update(status=Turn.Status.ANSWERED)
    again = sim.decrypt_reply(sim.post_message(sim.text_message("再问", userid="zhangsan")))
    assert again["stream"]["finish"] is False


@pytest.mark.slow
def test_long_connection_four_at_once_three_answered_one_told_and_none_lost(make_bot, start_worker):
    make_bot(
        connection_mode=Bot.ConnectionMode.LONG_CONNECTION,
        aibotid=BOT_ID,
        longconn_secret=SECRET,
        token="",
        encoding_aes_key="",
        rate_limit_per_minute=50,
        max_tokens=24,
    )
    start_worker()
    simulator = LongConnSimulator(bots={BOT_ID: SECRET})
    frames = []

    async def main() -> None:
        async with simulator:
            stop = asyncio.Event()
            config = ConnectorSettings(url=simulator.url, poll_seconds=0.2, forward_seconds=0.1)
            task = asyncio.create_task(Connector(config, holder="test").run(stop))
            try:
                await simulator.wait_until(lambda: simulator.subscribed(BOT_ID), 30)
                for text in ("年假怎么算", "报销流程", "加班怎么算", "病假怎么请"):
                    frames.append(await simulator.push_text(BOT_ID, text, userid="zhangsan"))
                for frame in frames:
                    await simulator.wait_finished(frame.req_id, timeout=240)
                deadline = time.monotonic() + 10
                while await sync_to_async(_undelivered)():
                    assert time.monotonic() < deadline, "final frames not recorded"
                    await asyncio.sleep(0.1)
            finally:
                stop.set()
                await asyncio.wait_for(task, 20)
                await sync_to_async(connections.close_all)()

    asyncio.run(main())

    turns = [Turn.objects.get(msgid=f.body["msgid"]) for f in frames]
    assert sorted(t.status for t in turns) == sorted(
        [Turn.Status.ANSWERED] * 3 + [Turn.Status.REJECTED]
    ), [(t.status, t.error) for t in turns]
    told = next(t for t in turns if t.status == Turn.Status.REJECTED)
    assert told.rejection_reason == "in_flight"
    for frame, turn in zip(frames, turns, strict=True):
        finals = [
            r
            for r in simulator.replies(frame.req_id)
            if r.errcode == 0 and r.frame.body["stream"].get("finish") is True
        ]
        assert len(finals) == 1, turn.pk  # every message got exactly one end
        assert turn.answer.strip() in finals[0].frame.body["stream"]["content"]
    # WeCom's limit was never exceeded: at most three streams were open for zhangsan.
    assert simulator.in_flight_peak[(BOT_ID, "zhangsan")] <= MAX_IN_FLIGHT_PER_USER


def _undelivered() -> bool:
    return Turn.objects.filter(longconn_delivered_at__isnull=True).exists()

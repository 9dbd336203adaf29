"""The long-connection client against the simulator's WebSocket server, over real sockets on
127.0.0.1: subscribe, callbacks, streamed replies, reconnects, kicks, refused secrets."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from wecom.longconn import (
    AckError,
    AuthGiveUp,
    Backoff,
    ConnectionPhase,
    Frame,
    LongConnClient,
    RateLimits,
)
from wecom.longconn.frames import (
    CMD_RESPOND_MSG,
    CMD_SEND_MSG,
    ERRCODE_AUTH_FAILED,
    ERRCODE_INVALID_REQ_ID,
    ERRCODE_RATE_LIMITED,
    ERRCODE_STREAM_EXPIRED,
)
from wecom.longconn.replies import (
    CHAT_TYPE_GROUP,
    template_card_body,
    update_card_body,
    welcome_text_body,
)
from wecom.simulator_longconn import ERRCODE_TOO_MANY_IN_FLIGHT, LongConnSimulator

BOT = "bot-sim-1"
SECRET = "long-connection-secret"
FAST_BACKOFF = Backoff(initial=0.01, maximum=0.05, jitter=0.0)

Handler = Callable[[Frame, LongConnClient], Awaitable[None]]


def run(scenario: Coroutine[Any, Any, None], timeout: float = 30.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


async def _ignore(frame: Frame, client: LongConnClient) -> None:
    """A handler for tests that only look at the connection."""


def _client(sim: LongConnSimulator, handler: Handler = _ignore, **options: Any) -> LongConnClient:
    options.setdefault("backoff", FAST_BACKOFF)
    return LongConnClient(bot_id=BOT, secret=SECRET, handler=handler, url=sim.url, **options)


async def _started(client: LongConnClient) -> asyncio.Task[ConnectionPhase]:
    task = asyncio.create_task(client.run())
    await client.wait_connected(5)
    return task


async def _stopped(client: LongConnClient, task: asyncio.Task[ConnectionPhase]) -> None:
    await client.stop()
    assert await task == ConnectionPhase.CLOSED


def test_subscribe_message_and_streamed_reply_with_feedback_on_the_first_frame() -> None:
    async def scenario() -> None:
        seen: list[Frame] = []

        async def answer(frame: Frame, client: LongConnClient) -> None:
            seen.append(frame)
            stream = client.stream(frame, feedback_id="fb-42")
            await stream.update("Hel")
            await stream.update("Hello")
            await stream.finish("Hello world")

        async with LongConnSimulator(bots={BOT: SECRET}) as sim:
            states: list[str] = []
            client = _client(sim, answer, on_state=lambda s: states.append(s.phase.value))
            task = await _started(client)
            assert client.state.connected_since is not None
            assert client.state.as_dict()["phase"] == "connected"

            callback = await sim.push_text(BOT, "what is the VPN address?", chatid="wrkSFfCgAA")
            final = await sim.wait_finished(callback.req_id)

            frames = [r.frame.body["stream"] for r in sim.replies(callback.req_id)]
            assert all(r.errcode == 0 for r in sim.replies(callback.req_id))
            assert frames[0]["feedback"] == {"id": "fb-42"}
            assert all("feedback" not in f for f in frames[1:])
            assert len({f["id"] for f in frames}) == 1
            assert final.frame.body["stream"]["content"] == "Hello world"
            assert [f["finish"] for f in frames] == [False] * (len(frames) - 1) + [True]
            # The group message carries the mention inline and belongs to the group.
            assert seen[0].body["text"]["content"] == "@RobotA what is the VPN address?"
            assert seen[0].conversation_key == "wrkSFfCgAA"
            assert client.state.last_message_at is not None
            await _stopped(client, task)
            assert states[:3] == ["connecting", "subscribing", "connected"]
            assert states[-1] == "closed"

    run(scenario())


def test_dropped_socket_reconnects_and_resubscribes() -> None:
    async def scenario() -> None:
        async def answer(frame: Frame, client: LongConnClient) -> None:
            await client.stream(frame).finish("still here")

        async with LongConnSimulator(bots={BOT: SECRET}) as sim:
            client = _client(sim, answer)
            task = await _started(client)
            await sim.drop(BOT)
            await sim.wait_until(lambda: sim.successful_subscribes(BOT) == 2)
            await client.wait_connected(5)
            assert client.state.subscribes == 2
            assert client.state.last_error is not None

            callback = await sim.push_text(BOT, "are you back?")
            final = await sim.wait_finished(callback.req_id)
            assert final.frame.body["stream"]["content"] == "still here"
            await _stopped(client, task)

    run(scenario())


def test_wrong_secret_backs_off_and_gives_up_after_bounded_attempts() -> None:
    async def scenario() -> None:
        waits: list[float] = []

        async def no_wait(seconds: float) -> None:
            waits.append(seconds)

        async with LongConnSimulator(bots={BOT: "the-real-secret"}) as sim:
            client = _client(
                sim, backoff=Backoff(), max_auth_failures=4, sleep=no_wait, rng=random.Random(7)
            )
            with pytest.raises(AuthGiveUp) as raised:
                await client.run()

            assert raised.value.errcode == ERRCODE_AUTH_FAILED
            assert [a.errcode for a in sim.subscribe_attempts] == [ERRCODE_AUTH_FAILED] * 4
            assert client.state.phase == ConnectionPhase.AUTH_FAILED
            assert client.state.auth_failures == 4
            assert "853000" in (client.state.last_error or "")
            # One wait between attempts, doubling from about a second: no hot loop.
            assert len(waits) == 3
            for wait, base in zip(waits, [1.0, 2.0, 4.0], strict=True):
                assert base * 0.8 <= wait <= base * 1.2

    run(scenario())


def test_a_second_subscriber_kicks_the_first_which_stops_without_fighting() -> None:
    async def scenario() -> None:
        async with LongConnSimulator(bots={BOT: SECRET}) as sim:
            first = _client(sim)
            first_task = await _started(first)
            second = _client(sim)
            second_task = await _started(second)

            assert await first_task == ConnectionPhase.STOPPED_KICKED
            assert first.state.phase == ConnectionPhase.STOPPED_KICKED
            assert "disconnected_event" in (first.state.last_error or "")
            await asyncio.sleep(0.2)  # the kicked client would be back by now if it fought
            assert sim.successful_subscribes(BOT) == 2
            assert sim.kicked == [BOT]
            assert second.state.phase == ConnectionPhase.CONNECTED
            await _stopped(second, second_task)

    run(scenario())


def test_long_answer_through_the_throttle_stays_inside_the_rate_limit_and_ends() -> None:
    # The windows are scaled down so the test runs in seconds; the counting is the same.
    limits = RateLimits(
        per_minute=30, per_hour=40, minute_seconds=1.0, hour_seconds=60.0, safety_seconds=0.25
    )
    tokens = [f"词{i} " for i in range(2000)]

    async def scenario() -> None:
        async def answer(frame: Frame, client: LongConnClient) -> None:
            stream = client.stream(frame, feedback_id="fb-long")
            text = ""
            for token in tokens:
                text += token
                await stream.update(text)
                await asyncio.sleep(0.001)
            await stream.finish(text)

        async with LongConnSimulator(bots={BOT: SECRET}, limits=limits) as sim:
            client = _client(sim, answer, rate_limits=limits)
            task = await _started(client)
            callback = await sim.push_text(BOT, "write a long answer", chatid="wrkLong")
            final = await sim.wait_finished(callback.req_id, timeout=60)

            replies = sim.replies(callback.req_id)
            assert [r.errcode for r in replies if r.errcode != 0] == []
            assert final.frame.body["stream"]["content"] == "".join(tokens)
            assert 2 < len(replies) <= limits.per_hour
            for i in range(len(replies)):
                window = [r for r in replies[i:] if r.at - replies[i].at < limits.minute_seconds]
                assert len(window) <= limits.per_minute
            await _stopped(client, task)

    run(scenario(), timeout=90)


def test_final_frames_wait_for_budget_when_streams_and_pushes_share_a_conversation() -> None:
    limits = RateLimits(
        per_minute=4, per_hour=100, minute_seconds=0.6, hour_seconds=60.0, safety_seconds=0.2
    )

    async def scenario() -> None:
        async def answer(frame: Frame, client: LongConnClient) -> None:
            stream = client.stream(frame)
            for n in range(20):
                await stream.update("x" * n)
            await client.send_markdown(chatid="wrkBusy", chat_type=CHAT_TYPE_GROUP, content="FYI")
            await stream.finish(f"done {frame.body['text']['content']}")

        async with LongConnSimulator(bots={BOT: SECRET}, limits=limits) as sim:
            client = _client(sim, answer, rate_limits=limits)
            task = await _started(client)
            callbacks = [await sim.push_text(BOT, f"q{i}", chatid="wrkBusy") for i in range(3)]
            for callback in callbacks:
                final = await sim.wait_finished(callback.req_id, timeout=20)
                assert final.frame.body["stream"]["content"].startswith("done")
            assert [r.errcode for r in sim.received if r.errcode != 0] == []
            pushes = [r for r in sim.received if r.frame.cmd == CMD_SEND_MSG]
            assert len(pushes) == 3
            await _stopped(client, task)

    run(scenario())


def test_simulator_refuses_unknown_req_id_finished_stream_and_rate_limit() -> None:
    limits = RateLimits(per_minute=3, per_hour=100, minute_seconds=30.0, safety_seconds=0.0)

    async def scenario() -> None:
        async with LongConnSimulator(bots={BOT: SECRET}, limits=limits) as sim:
            client = _client(sim, rate_limits=limits)
            task = await _started(client)
            stream_body = {"msgtype": "stream", "stream": {"id": "s1", "finish": True}}

            with pytest.raises(AckError) as unknown:
                await client.request(CMD_RESPOND_MSG, stream_body, req_id="made-up")
            assert unknown.value.errcode == ERRCODE_INVALID_REQ_ID

            callback = await sim.push_text(BOT, "hi", userid="lisi")
            await client.request(CMD_RESPOND_MSG, stream_body, req_id=callback.req_id)
            with pytest.raises(AckError) as expired:
                await client.request(CMD_RESPOND_MSG, stream_body, req_id=callback.req_id)
            assert expired.value.errcode == ERRCODE_STREAM_EXPIRED

            push = {"chatid": "lisi", "chat_type": 1, "msgtype": "text", "text": {"content": "x"}}
            await client.request(CMD_SEND_MSG, push)
            await client.request(CMD_SEND_MSG, push)
            with pytest.raises(AckError) as limited:
                await client.request(CMD_SEND_MSG, push)
            assert limited.value.errcode == ERRCODE_RATE_LIMITED
            await _stopped(client, task)

    run(scenario())


def test_simulator_refuses_a_fourth_open_stream_for_one_user() -> None:
    async def scenario() -> None:
        async with LongConnSimulator(bots={BOT: SECRET}) as sim:
            client = _client(sim)
            task = await _started(client)
            callbacks = [await sim.push_text(BOT, f"q{i}", userid="lisi") for i in range(4)]
            other = await sim.push_text(BOT, "q", userid="wangwu")

            def body(stream_id: str, finish: bool) -> dict[str, Any]:
                return {"msgtype": "stream", "stream": {"id": stream_id, "finish": finish}}

            for i, callback in enumerate(callbacks[:3]):
                await client.request(CMD_RESPOND_MSG, body(f"s{i}", False), req_id=callback.req_id)
            # Given three of lisi's streams open, a fourth is refused; another user's is not
            with pytest.raises(AckError) as refused:
                await client.request(CMD_RESPOND_MSG, body("s3", False), req_id=callbacks[3].req_id)
            assert refused.value.errcode == ERRCODE_TOO_MANY_IN_FLIGHT
            await client.request(CMD_RESPOND_MSG, body("o", False), req_id=other.req_id)
            # When one ends, the fourth may open
            await client.request(CMD_RESPOND_MSG, body("s0", True), req_id=callbacks[0].req_id)
            await client.request(CMD_RESPOND_MSG, body("s3", False), req_id=callbacks[3].req_id)
            assert sim.in_flight_peak[(BOT, "lisi")] == 3
            await _stopped(client, task)

    run(scenario())


def test_welcome_card_click_and_feedback_events() -> None:
    async def scenario() -> None:
        feedback: list[dict[str, Any]] = []

        async def on_event(frame: Frame, client: LongConnClient) -> None:
            if frame.eventtype == "enter_chat":
                card = {"card_type": "button_interaction", "task_id": "t1"}
                await client.respond_welcome(frame, template_card_body(card))
            elif frame.eventtype == "template_card_event":
                card = {"card_type": "text_notice", "main_title": {"title": "asked"}}
                await client.respond_update(frame, update_card_body(card, userids=["wangwu"]))
            elif frame.eventtype == "feedback_event":
                feedback.append(frame.body["event"]["feedback_event"])

        async with LongConnSimulator(bots={BOT: SECRET}) as sim:
            client = _client(sim, on_event)
            task = await _started(client)
            enter = await sim.push_event(BOT, "enter_chat", userid="wangwu")
            click = await sim.push_event(
                BOT, "template_card_event", userid="wangwu", detail={"event_key": "q1"}
            )
            await sim.push_event(
                BOT, "feedback_event", userid="wangwu", detail={"id": "fb-42", "type": 1}
            )
            await sim.wait_until(
                lambda: bool(
                    sim.replies(enter.req_id, cmd="aibot_respond_welcome_msg")
                    and sim.replies(click.req_id, cmd="aibot_respond_update_msg")
                    and feedback
                )
            )
            welcome = sim.replies(enter.req_id, cmd="aibot_respond_welcome_msg")
            update = sim.replies(click.req_id, cmd="aibot_respond_update_msg")
            assert [r.errcode for r in welcome + update] == [0, 0]
            assert feedback == [{"id": "fb-42", "type": 1}]
            # A welcome answers enter_chat only, once.
            with pytest.raises(AckError):
                await client.respond_welcome(enter, welcome_text_body("hello again"))
            await _stopped(client, task)

    run(scenario())


def test_malformed_frames_are_reported_and_the_connection_keeps_serving() -> None:
    async def scenario() -> None:
        async def answer(frame: Frame, client: LongConnClient) -> None:
            await client.stream(frame).finish("fine")

        async with LongConnSimulator(bots={BOT: SECRET}) as sim:
            client = _client(sim, answer)
            task = await _started(client)
            for raw in ["not json", "[1, 2]", '{"cmd": "aibot_msg_callback"}', '{"headers": {}}']:
                await sim.send_raw(BOT, raw)
            callback = await sim.push_text(BOT, "still answering?")
            final = await sim.wait_finished(callback.req_id)
            assert final.frame.body["stream"]["content"] == "fine"
            assert "malformed frame" in (client.state.last_error or "")
            assert client.state.subscribes == 1
            await _stopped(client, task)

    run(scenario())


def test_pings_keep_the_connection_and_unanswered_pings_reconnect() -> None:
    async def scenario() -> None:
        async with LongConnSimulator(bots={BOT: SECRET}) as sim:
            client = _client(sim, ping_interval=0.05, ack_timeout=0.1)
            task = await _started(client)
            await sim.wait_until(lambda: sim.pings >= 3)
            assert client.state.subscribes == 1

            sim.answer_pings = False
            await sim.wait_until(lambda: sim.successful_subscribes(BOT) == 2)
            assert "pings unanswered" in (client.state.last_error or "")
            sim.answer_pings = True
            await _stopped(client, task)

    run(scenario())

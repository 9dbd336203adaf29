"""Nothing lost, nothing twice: each fault of issue 19 at its root.

Faults are produced with the real components where possible: the broker and the cache
pointed at a closed loopback port, a worker that stops renewing its lease, the real model
stopped by its length and time limits. Only a database error inside a task is raised by a
stand-in, at the task's boundary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import socket
import time
from collections.abc import Iterator

import pytest
from celery.exceptions import Retry
from django.db import OperationalError
from django.test import override_settings
from django.utils import timezone
from kombu import Queue

from apps.audit.models import LedgerEntry
from apps.bots import tasks
from apps.bots.models import Conversation, Turn
from apps.bots.services import deliver, generate, receive, stream
from apps.bots.streams import StreamFlusher, StreamState, stream_state_get, stream_state_set
from apps.inference.model_workers import inference_worker_publish
from apps.inference.models import ModelProfile
from wecom.messages import InboundMessage, StreamRefresh
from wecom_ai.celery import app as celery_app
from wecom_ai.queues import INFERENCE, inference_queue

pytestmark = pytest.mark.django_db(transaction=True)

APOLOGY_ZH = "抱歉"
FOLLOW_UP_ZH = "完整回答稍后发送"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _turn(bot, *, msgid: str = "m-1", ago: float = 0.0, **fields) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(bot=bot, chat_type="single", userid="u1")
    received = timezone.now() - dt.timedelta(seconds=ago)
    values = {
        "bot": bot,
        "conversation": conversation,
        "msgid": msgid,
        "stream_id": f"s-{msgid}",
        "question": "年假怎么算？",
        "received_at": received,
    }
    values.update(fields)
    turn = Turn.objects.create(**values)
    stream_state_set(
        turn.stream_id, StreamState(deadline=received.timestamp() + 330, content="partial")
    )
    return turn


def _message(msgid: str) -> InboundMessage:
    return InboundMessage(
        msgid=msgid,
        aibotid="",
        chatid=None,
        chattype="single",
        userid="u1",
        response_url=None,
        msgtype="text",
        text="年假怎么算？",
        image_urls=(),
        quote=None,
        raw={},
    )


def _refresh(turn: Turn) -> dict:
    refresh = StreamRefresh(
        msgid="r", aibotid="", chatid=None, chattype="single", userid="u1",
        stream_id=turn.stream_id, raw={},
    )  # fmt: skip
    return stream.stream_refresh(bot=turn.bot, refresh=refresh)["stream"]


def _inference_messages() -> int:
    """Answer tasks waiting in the inference queues (one per model profile)."""
    names = [
        INFERENCE,
        *(inference_queue(pk) for pk in ModelProfile.objects.values_list("pk", flat=True)),
    ]
    with celery_app.connection_for_write() as conn:
        return sum(int(conn.default_channel._size(name)) for name in names)


@contextlib.contextmanager
def _broker_unreachable() -> Iterator[None]:
    """The broker unreachable: Celery's publisher connects to a closed loopback port."""
    closed = f"redis://127.0.0.1:{_closed_port()}/0"
    original = celery_app.connection_for_write
    saved_pool = celery_app.amqp._producer_pool
    celery_app.connection_for_write = functools.partial(original, closed)  # type: ignore[method-assign]
    celery_app.amqp._producer_pool = None
    try:
        yield
    finally:
        del celery_app.connection_for_write  # the class's method again
        celery_app.amqp._producer_pool = saved_pool


def _cache_down() -> override_settings:
    """Django's cache (stream state) pointed at a closed loopback port: Redis is gone."""
    from django.conf import settings

    caches = {"default": {**settings.CACHES["default"]}}
    caches["default"]["LOCATION"] = f"redis://127.0.0.1:{_closed_port()}/0"
    return override_settings(CACHES=caches)


# --- 1. a transient error is retried, bounded by the turn's deadline -----------------------------


def test_a_database_error_in_the_task_is_retried_not_acknowledged_away(bot, monkeypatch):
    calls: list[int] = []

    def flaky(*, turn_id: int) -> None:
        calls.append(turn_id)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(generate, "turn_generate", flaky)
    monkeypatch.setattr(tasks, "retry_countdown", lambda **kw: 0.0)
    result = tasks.turn_generate.apply(args=(7,))
    assert calls == [7, 7]
    assert result.successful()


def test_retries_stop_when_the_next_try_would_miss_the_turns_deadline():
    assert tasks.retry_countdown(retries=0, give_up_at=100.0, now=0.0) == 1.0
    assert tasks.retry_countdown(retries=3, give_up_at=100.0, now=0.0) == 8.0
    assert tasks.retry_countdown(retries=9, give_up_at=100.0, now=0.0) == 10.0
    assert tasks.retry_countdown(retries=9, give_up_at=100.0, now=95.0) is None


# --- 2. a saved turn is always enqueued ----------------------------------------------------------


def test_a_broker_outage_after_the_save_leaves_the_turn_unqueued_not_failed(bot):
    with _broker_unreachable():
        turn = receive.mention_receive(
            bot=bot, message=_message("m-broker"), received_at=timezone.now()
        )
    turn.refresh_from_db()
    assert turn.status == Turn.Status.QUEUED
    assert turn.queued_at is None  # stamped only once the broker took the task


def test_wecoms_retry_of_an_unqueued_turn_enqueues_it(bot):
    with _broker_unreachable():
        first = receive.mention_receive(
            bot=bot, message=_message("m-retry"), received_at=timezone.now()
        )
    first.refresh_from_db()
    assert first.queued_at is None
    before = _inference_messages()
    again = receive.mention_receive(
        bot=bot, message=_message("m-retry"), received_at=timezone.now()
    )
    assert again.pk == first.pk
    again.refresh_from_db()
    assert again.queued_at is not None
    assert _inference_messages() == before + 1
    # A third delivery of an enqueued turn sends nothing more.
    receive.mention_receive(bot=bot, message=_message("m-retry"), received_at=timezone.now())
    assert _inference_messages() == before + 1


def test_the_sweeper_enqueues_a_turn_saved_but_never_enqueued(bot):
    turn = _turn(bot, msgid="m-lost", ago=20)
    before = _inference_messages()
    assert deliver.turns_sweep() == 0
    turn.refresh_from_db()
    assert turn.status == Turn.Status.QUEUED and turn.queued_at is not None
    assert _inference_messages() == before + 1


# --- 3. turns of a killed worker are retried; the rest fail inside the window ---------------------


def _orphan(bot, *, msgid: str, attempts: int, ago: float) -> Turn:
    """A turn claimed by a worker that died: generating, its heartbeat a minute old."""
    return _turn(
        bot,
        msgid=msgid,
        ago=ago,
        status=Turn.Status.GENERATING,
        attempts=attempts,
        queued_at=timezone.now() - dt.timedelta(seconds=ago),
        heartbeat_at=timezone.now() - dt.timedelta(seconds=60),
    )


def test_the_sweeper_requeues_an_orphaned_turn_once_while_attempts_remain(bot, settings):
    settings.TURN_MAX_ATTEMPTS = 3
    turn = _orphan(bot, msgid="m-orphan", attempts=1, ago=40)
    before = _inference_messages()
    assert deliver.turns_sweep() == 0
    assert deliver.turns_sweep() == 0  # the next sweep does not send a duplicate
    turn.refresh_from_db()
    assert turn.status == Turn.Status.GENERATING
    assert _inference_messages() == before + 1
    # The requeued task takes the turn over: its lease ran out.
    claimed = generate.turn_claim(turn_id=turn.pk)
    assert claimed is not None and claimed.attempts == 2


def _taken_in_order(count: int, *, profile_id: int) -> list[int]:
    """Turn ids as a worker takes them off the profile's queue (BRPOP, like `celery worker`)."""
    taken: list[int] = []

    def on_message(body, message) -> None:
        taken.append(int(body[0][0]))  # task protocol 2: (args, kwargs, embed)
        message.ack()

    with celery_app.connection_for_read() as conn:
        queue = Queue(inference_queue(profile_id))
        with conn.Consumer(queue, callbacks=[on_message], accept=["json"], prefetch_count=1):
            while len(taken) < count:
                conn.drain_events(timeout=5)
    return taken


def test_a_requeued_turn_is_taken_before_fresh_ones(bot, settings):
    # The previous chaos run: turns re-queued after a worker kill joined the back of a long
    # queue and missed WeCom's window. A turn sent again goes first, a resumed one before all.
    settings.TURN_MAX_ATTEMPTS = 3
    settings.TURN_REQUEUE_SECONDS = 15
    # A worker serves the profile (else the sweeper fails a turn waiting 30 s for none).
    inference_worker_publish(name="inference@test", profile_ids=None)
    fresh = [_turn(bot, msgid=f"m-fresh-{i}") for i in range(3)]
    for turn in fresh:
        assert receive.turn_enqueue(turn_id=turn.pk)
    stale = _turn(bot, msgid="m-stale", ago=60, queued_at=timezone.now() - dt.timedelta(seconds=60))
    orphan = _orphan(bot, msgid="m-resumed", attempts=1, ago=40)
    assert deliver.turns_sweep() == 0
    assert _inference_messages() == 5
    assert _taken_in_order(5, profile_id=bot.model_profile_id) == [
        orphan.pk, stale.pk, *(turn.pk for turn in fresh)
    ]  # fmt: skip


def test_a_task_retried_after_a_transient_error_goes_before_fresh_ones(bot, monkeypatch):
    fresh = _turn(bot, msgid="m-fresh")
    assert receive.turn_enqueue(turn_id=fresh.pk)

    def down(*, turn_id: int) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(generate, "turn_generate", down)
    monkeypatch.setattr(tasks, "retry_countdown", lambda **kw: None if kw["retries"] else 0.0)
    # Run as a worker would (not eagerly): the retry is published to the broker.
    task = tasks.turn_generate
    # Delivered from the profile's queue, as a worker receives it: the retry goes back there.
    delivery = {"exchange": "", "routing_key": inference_queue(bot.model_profile_id)}
    task.push_request(id="t-1", retries=0, delivery_info=delivery, called_directly=False)
    try:
        with pytest.raises(Retry):
            task.run(4242)
    finally:
        task.pop_request()
    assert _taken_in_order(2, profile_id=bot.model_profile_id) == [4242, fresh.pk]


def test_an_orphan_out_of_attempts_fails_with_the_apology_in_the_bubble(bot, settings):
    settings.TURN_MAX_ATTEMPTS = 2
    turn = _orphan(bot, msgid="m-spent", attempts=2, ago=40)
    assert deliver.turns_sweep() == 1
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED
    state = stream_state_get(turn.stream_id)
    assert state is not None and state.finish and APOLOGY_ZH in state.content


def test_a_turn_still_queued_as_the_window_closes_fails_inside_it(bot):
    # 310 s after the message: WeCom polls until 360 s; the default sweep waited 900 s.
    turn = _turn(bot, msgid="m-late", ago=310, queued_at=timezone.now())
    assert deliver.turns_sweep() == 1
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED
    state = stream_state_get(turn.stream_id)
    assert state is not None and state.finish and APOLOGY_ZH in state.content
    assert LedgerEntry.objects.filter(ref__endswith=f":{turn.pk}").count() == 1


def test_a_live_turn_is_left_alone_by_the_sweeper(bot):
    turn = _turn(bot, msgid="m-live", ago=40, status=Turn.Status.GENERATING, attempts=1,
                 queued_at=timezone.now(), heartbeat_at=timezone.now())  # fmt: skip
    before = _inference_messages()
    assert deliver.turns_sweep() == 0
    assert _inference_messages() == before
    turn.refresh_from_db()
    assert turn.status == Turn.Status.GENERATING


def test_a_late_refresh_promises_a_follow_up_only_while_really_generating(bot):
    queued = _turn(bot, msgid="m-q", ago=340, queued_at=timezone.now())
    live = _turn(bot, msgid="m-g", ago=340, status=Turn.Status.GENERATING, attempts=1,
                 queued_at=timezone.now(), heartbeat_at=timezone.now())  # fmt: skip
    nobody = _refresh(queued)
    assert nobody["finish"] is True and APOLOGY_ZH in nobody["content"]
    assert FOLLOW_UP_ZH not in nobody["content"]
    queued.refresh_from_db()
    assert queued.status == Turn.Status.FAILED
    working = _refresh(live)
    assert working["finish"] is True and APOLOGY_ZH not in working["content"]
    assert FOLLOW_UP_ZH in working["content"]
    live.refresh_from_db()
    assert live.status == Turn.Status.GENERATING and live.stream_closed_at is not None


def test_a_database_error_closing_the_stream_at_its_deadline_does_not_end_the_decode(
    bot, monkeypatch
):
    # Seen in the chaos bench after a PostgreSQL kill -9: the decode thread's connection was
    # dead, its first query was the close at the stream deadline, and the error ended the
    # task (too late for a retry) with the answer half written and the bubble left open.
    turn = _turn(bot, msgid="m-closing", ago=400, status=Turn.Status.GENERATING, attempts=1,
                 queued_at=timezone.now(), heartbeat_at=timezone.now())  # fmt: skip
    flusher = StreamFlusher(
        turn_id=turn.pk, stream_id=turn.stream_id, deadline=time.time() - 1, interval=0.05
    )
    answering = generate._Answering(
        turn=turn, policies=[], knowledge_bases=[], flusher=flusher, deadline=time.time() - 1
    )
    answering.first_token = True
    answering.splitter.feed("The first half of the answer")
    real_close = Turn.close_stream
    calls: list[int] = []

    def close_once_broken(self: Turn) -> bool:
        calls.append(self.pk)
        if len(calls) == 1:
            raise OperationalError("terminating connection due to unexpected postmaster exit")
        return real_close(self)

    monkeypatch.setattr(Turn, "close_stream", close_once_broken)
    try:
        assert generate._answer_progress(answering) is True
        assert turn.stream_closed_at is None
        answering.last_flush = 0.0
        assert generate._answer_progress(answering) is True  # the next flush closes it
    finally:
        flusher.stop()
    assert len(calls) == 2
    turn.refresh_from_db()
    assert turn.stream_closed_at is not None
    state = stream_state_get(turn.stream_id)
    assert state is not None and state.finish and "The first half" in state.content


# --- 4. the lease lives as long as the claim; one end per turn ------------------------------------


def test_the_lease_is_renewed_while_the_turn_waits_without_tokens(bot, settings):
    settings.TURN_LEASE_SECONDS = 1.0
    turn = _turn(bot, msgid="m-wait", queued_at=timezone.now())
    claimed = generate.turn_claim(turn_id=turn.pk)
    assert claimed is not None
    keeper = generate._LeaseKeeper(claimed, interval=0.2)
    try:
        time.sleep(2.5)  # more than twice the lease, and no token arrived
        assert deliver.turns_sweep() == 0
        claimed.refresh_from_db()
        assert claimed.status == Turn.Status.GENERATING
        assert timezone.now() - claimed.heartbeat_at < dt.timedelta(seconds=1)
        assert not keeper.lost.is_set()
    finally:
        keeper.stop()


def test_a_duplicate_task_leaves_a_live_claim_and_takes_over_a_dead_one(bot, settings):
    settings.TURN_LEASE_SECONDS = 1.5
    live = _turn(bot, msgid="m-alive", status=Turn.Status.GENERATING, attempts=1,
                 heartbeat_at=timezone.now())  # fmt: skip
    keeper = generate._LeaseKeeper(live, interval=0.5)
    try:
        started = time.monotonic()
        assert generate.turn_claim(turn_id=live.pk) is None
        assert time.monotonic() - started < 3.0  # left on a renewal, not at the 6.5 s deadline
    finally:
        keeper.stop()
    dead = _turn(bot, msgid="m-dead", status=Turn.Status.GENERATING, attempts=1,
                 heartbeat_at=timezone.now())  # fmt: skip
    taken = generate.turn_claim(turn_id=dead.pk)  # nobody renews: the lease runs out
    assert taken is not None and taken.attempts == 2


def test_the_keeper_reports_a_turn_taken_over(bot):
    turn = _turn(bot, msgid="m-taken", status=Turn.Status.GENERATING, attempts=1,
                 heartbeat_at=timezone.now())  # fmt: skip
    keeper = generate._LeaseKeeper(turn, interval=0.1)
    try:
        Turn.objects.filter(pk=turn.pk).update(attempts=2)  # another worker's attempt
        deadline = time.monotonic() + 5
        while not keeper.lost.is_set():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        keeper.stop()


def test_finishing_a_failed_turn_delivers_nothing_and_records_one_end(bot, response_server):
    turn = _turn(bot, msgid="m-twice", status=Turn.Status.GENERATING, attempts=1,
                 heartbeat_at=timezone.now(),
                 response_url=response_server.url_for("m-twice"))  # fmt: skip
    worker_view = Turn.objects.get(pk=turn.pk)
    assert deliver.turn_fail(turn=Turn.objects.get(pk=turn.pk), error="sweeper")
    assert deliver.turn_finish(turn=worker_view, reasoning="", answer="年假五天。") is False
    state = stream_state_get(turn.stream_id)
    assert state is not None and state.finish and APOLOGY_ZH in state.content
    assert response_server.posts("m-twice") == []
    assert LedgerEntry.objects.filter(ref__endswith=f":{turn.pk}").count() == 1


# --- 5. a finished stream is never reopened ------------------------------------------------------


def test_the_flusher_never_reopens_a_finished_stream(bot):
    turn = _turn(bot, msgid="m-flush", status=Turn.Status.GENERATING, attempts=1)
    deadline = time.time() + 300
    stream_state_set(turn.stream_id, StreamState(content="apology", finish=True, deadline=deadline))
    flusher = StreamFlusher(turn_id=turn.pk, stream_id=turn.stream_id, deadline=deadline,
                            interval=0.01)  # fmt: skip
    try:
        flusher.update("a late partial")
        time.sleep(0.5)
    finally:
        flusher.stop()
    state = stream_state_get(turn.stream_id)
    assert state == StreamState(content="apology", finish=True, deadline=deadline)


def test_the_flusher_still_writes_an_open_stream(bot):
    turn = _turn(bot, msgid="m-open", status=Turn.Status.GENERATING, attempts=1)
    flusher = StreamFlusher(turn_id=turn.pk, stream_id=turn.stream_id,
                            deadline=time.time() + 300, interval=0.01)  # fmt: skip
    try:
        flusher.update("年假")
        deadline = time.monotonic() + 5
        while (stream_state_get(turn.stream_id) or StreamState()).content != "年假":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        flusher.stop()
    assert stream_state_get(turn.stream_id).finish is False


# --- 6. Redis failing at the end costs neither the answer nor the bubble's end -------------


def test_an_answer_finished_while_redis_is_down_is_served_from_the_database(bot):
    turn = _turn(bot, msgid="m-redis", status=Turn.Status.GENERATING, attempts=1,
                 heartbeat_at=timezone.now())  # fmt: skip
    with _cache_down():
        assert deliver.turn_finish(turn=turn, reasoning="", answer="年假五天。") is True
        turn.refresh_from_db()
        assert turn.status == Turn.Status.ANSWERED
        assert turn.stream_closed_at is None  # the close needs the Redis write
        during = _refresh(turn)
        assert during["finish"] is True and "年假五天" in during["content"]
    # Redis is back with the stream still open (finish=false): the database wins.
    assert stream_state_get(turn.stream_id).finish is False
    after = _refresh(turn)
    assert after["finish"] is True and "年假五天" in after["content"]


def test_a_failure_while_redis_is_down_still_ends_the_bubble(bot):
    turn = _turn(bot, msgid="m-redis-fail", status=Turn.Status.GENERATING, attempts=1,
                 heartbeat_at=timezone.now())  # fmt: skip
    with _cache_down():
        assert deliver.turn_fail(turn=turn, error="engine gone") is True
    after = _refresh(turn)
    assert after["finish"] is True and APOLOGY_ZH in after["content"]


# --- 7. a cut-off answer says so and records why -------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "reason"),
    [({"max_tokens": 16}, "length"), ({"timeout": 0.8}, "deadline")],
    ids=["max-tokens", "generation-timeout"],
)
def test_a_cut_off_answer_says_so_and_records_why(make_bot, settings, limits, reason):
    bot = make_bot(max_tokens=limits.get("max_tokens", 2000))
    if "timeout" in limits:
        settings.TURN_GENERATION_TIMEOUT_SECONDS = limits["timeout"]
    story = "Write a very long story about a dragon, at least 2000 words."
    turn = _turn(bot, msgid=f"m-cut-{reason}", queued_at=timezone.now(), question=story)
    generate.turn_generate(turn_id=turn.pk)
    turn.refresh_from_db()
    assert turn.status == Turn.Status.ANSWERED, turn.error
    assert turn.finish_reason == reason
    assert "回答到此被截断" in turn.answer
    assert "回答到此被截断" in stream_state_get(turn.stream_id).content


def test_a_complete_answer_carries_no_cut_off_note(make_bot):
    bot = make_bot(max_tokens=200)
    turn = _turn(bot, msgid="m-whole", queued_at=timezone.now(), question="Say hi.")
    generate.turn_generate(turn_id=turn.pk)
    turn.refresh_from_db()
    assert turn.status == Turn.Status.ANSWERED, turn.error
    if turn.finish_reason == "stop":
        assert "截断" not in turn.answer
    assert turn.finish_reason in {"stop", "length"}

"""The long-connection connector: bots on the long connection answered through the turn pipeline.

WeCom's side is `LongConnSimulator` on 127.0.0.1; the connector is the real `longconn_run`
process (or, for the fast tests, the same `Connector` in this process), the worker the real
Celery worker with the bundled model.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import OperatorAuditEntry
from apps.bots.connector import Connector, ConnectorSettings
from apps.bots.models import Bot, LongConnection, Turn
from apps.bots.services.config import bot_credentials_set, bot_save
from tests.conftest import BASE_DIR, turn_terminal, worker_env
from wecom.longconn.frames import EVENT_FEEDBACK
from wecom.simulator_longconn import LongConnSimulator
from wecom.simulator_longconn_thread import LongConnSimulatorThread

BOT_ID = "aib-longconn-test"
SECRET = "s3cret-long-connection-value"


@pytest.fixture
def long_bot(make_bot):
    return make_bot(
        connection_mode=Bot.ConnectionMode.LONG_CONNECTION,
        aibotid=BOT_ID,
        longconn_secret=SECRET,
        token="",
        encoding_aes_key="",
    )


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_long_connection_needs_botid_and_secret_and_keeps_them_out_of_the_audit(make_bot):
    operator = User.objects.create_user("op", password="x-Very-Long-Pass-1", is_staff=True)
    bot = make_bot()
    # Given a callback bot switched to the long connection without its Secret
    bot.connection_mode = Bot.ConnectionMode.LONG_CONNECTION
    bot.aibotid = BOT_ID
    # Then the service refuses it
    with pytest.raises(ValidationError) as refused:
        bot_save(bot=bot, actor=operator)
    assert "longconn_secret" in refused.value.message_dict
    # When the Secret is set through the credentials service
    assert bot_credentials_set(bot=bot, actor=operator, longconn_secret=SECRET) == [
        "longconn_secret"
    ]
    # Then it is stored encrypted and the entry shows a fingerprint, never the value
    bot.refresh_from_db()
    assert bot.longconn_secret == SECRET and bot.uses_long_connection
    entry = OperatorAuditEntry.objects.get(action="bots.bot.update")
    assert SECRET not in f"{entry.before} {entry.after}"
    assert entry.after["longconn_secret_fingerprint"].startswith("hmac-sha256:")
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT longconn_secret FROM bots_bot WHERE id = %s", [bot.pk])
        assert SECRET not in cursor.fetchone()[0]


@pytest.mark.django_db
def test_admin_form_switches_modes_and_the_callback_url_is_off(admin_client, long_bot):
    # A long-connection bot's callback URL answers like an unknown bot's
    response = Client().post(long_bot.callback_path() + "?msg_signature=a&timestamp=1&nonce=n")
    assert response.status_code == 404
    # The admin form wants the Secret for the long connection, and no Token for it
    data = {
        "name": "LC",
        "slug": "lc",
        "enabled": "on",
        "connection_mode": "long_connection",
        "aibotid": "aib-2",
        "new_token": "",
        "new_encoding_aes_key": "",
        "new_longconn_secret": "",
        "model_profile": long_bot.model_profile_id,
        "max_tokens": "64",
        "context_turns": "5",
        "rate_limit_per_minute": "10",
        "retrieval_top_k": "4",
        "queue_notice_seconds": "3",
    }
    response = admin_client.post(reverse("admin:bots_bot_add"), data)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["new_longconn_secret"]
    response = admin_client.post(reverse("admin:bots_bot_add"), data | {"new_longconn_secret": "S"})
    assert response.status_code == 302, response.content.decode()[:2000]
    bot = Bot.objects.get(slug="lc")
    assert bot.longconn_secret == "S" and bot.token == ""
    page = admin_client.get(reverse("admin:bots_bot_change", args=[bot.pk])).content.decode()
    assert "longconn_run" in page  # no connector has picked it up yet, and the page says so


@pytest.mark.django_db
def test_one_connector_holds_a_bot_until_its_lease_runs_out(long_bot):
    from apps.bots.services.longconn import longconn_lease_take

    LongConnection.objects.create(bot=long_bot)
    assert longconn_lease_take(bot_id=long_bot.pk, holder="a", ttl=30)
    assert not longconn_lease_take(bot_id=long_bot.pk, holder="b", ttl=30)
    assert longconn_lease_take(bot_id=long_bot.pk, holder="a", ttl=30)  # renewal
    # When a stops renewing (killed), its lease runs out and b takes the bot
    LongConnection.objects.filter(bot=long_bot).update(
        lease_until=timezone.now() - timedelta(seconds=1)
    )
    assert longconn_lease_take(bot_id=long_bot.pk, holder="b", ttl=30)
    assert not longconn_lease_take(bot_id=long_bot.pk, holder="a", ttl=30)
    assert LongConnection.objects.get(bot=long_bot).holder == "b"


# --- a connector in this process (no processes, no model) ---------------------------------------


def _delivered(msgid: str) -> bool:
    """The connector records the final frame a moment after WeCom acknowledged it."""
    return Turn.objects.filter(msgid=msgid, longconn_delivered_at__isnull=False).exists()


def _run_connector(simulator: LongConnSimulator, until, *, timeout: float, **config) -> None:
    async def main() -> None:
        async with simulator:
            stop = asyncio.Event()
            settings = ConnectorSettings(url=simulator.url, poll_seconds=0.2, **config)
            task = asyncio.create_task(Connector(settings, holder="test").run(stop))
            deadline = time.monotonic() + timeout
            try:
                while not await until(simulator):
                    assert time.monotonic() < deadline, "condition not reached in time"
                    await asyncio.sleep(0.1)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
                # The connector's database thread must not keep a connection past the test.
                await sync_to_async(connections.close_all)()

    asyncio.run(main())


@pytest.mark.django_db(transaction=True)
def test_wrong_secret_is_shown_and_not_retried_in_a_loop(long_bot, admin_client):
    simulator = LongConnSimulator(bots={BOT_ID: "the-right-secret"})
    state = {}

    async def given_up(sim: LongConnSimulator) -> bool:
        row = await sync_to_async(LongConnection.objects.filter(bot=long_bot).first)()
        if row is None or row.phase != "auth_failed":
            return False
        if "at" not in state:
            state["at"], state["attempts"] = time.monotonic(), len(sim.subscribe_attempts)
        # Keep the connector running a while after it gave up: no more attempts come.
        return time.monotonic() - state["at"] > 1.5

    _run_connector(simulator, given_up, timeout=30, max_auth_failures=3, backoff_seconds=0.05)
    assert state["attempts"] == len(simulator.subscribe_attempts) == 3
    assert all(a.errcode != 0 for a in simulator.subscribe_attempts)
    row = LongConnection.objects.get(bot=long_bot)
    assert "853000" in row.last_error
    page = admin_client.get(reverse("admin:bots_bot_change", args=[long_bot.pk])).content
    assert b"853000" in page
    live = admin_client.get(reverse("admin:bots_bot_connection", args=[long_bot.pk])).json()
    assert "853000" in live["text"] and SECRET not in live["text"]


@pytest.mark.django_db(transaction=True)
def test_refused_question_is_answered_with_feedback_id_on_the_first_frame(long_bot):
    # A question from someone the bot does not serve is refused at admission: no worker or
    # model is involved, but it goes through the same pipeline and comes back as frames.
    long_bot.allowed_userids = ["someone-else"]
    long_bot.save()
    simulator = LongConnSimulator(bots={BOT_ID: SECRET})
    sent = {}

    async def answered(sim: LongConnSimulator) -> bool:
        if not sim.subscribed(BOT_ID):
            return False
        if "frame" not in sent:
            sent["frame"] = await sim.push_text(BOT_ID, "你好", userid="lisi")
        return await sync_to_async(_delivered)(sent["frame"].body["msgid"])

    _run_connector(simulator, answered, timeout=30)
    frame = sent["frame"]
    turn = Turn.objects.get(msgid=frame.body["msgid"])
    assert turn.status == Turn.Status.REJECTED and turn.longconn_req_id == frame.req_id
    replies = [r for r in simulator.replies(frame.req_id) if r.errcode == 0]
    assert len(replies) == 1
    stream = replies[0].frame.body["stream"]
    assert stream["feedback"]["id"] == turn.stream_id
    assert stream["content"] == turn.answer
    assert turn.longconn_delivered_at is not None
    state = LongConnection.objects.get(bot=long_bot)
    assert state.connected_since is None and state.phase == "closed"  # stopped cleanly


# --- end to end: connector and worker processes, the real model ---------------------------------


class ConnectorProcess:
    def __init__(self, url: str, **env: str) -> None:
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"connector-{time.time_ns()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "longconn_run", "--url", url],
            cwd=BASE_DIR,
            env=worker_env(
                WECOM_LONGCONN_LEASE_SECONDS="5",
                WECOM_LONGCONN_POLL_SECONDS="0.5",
                WECOM_LONGCONN_BACKOFF_SECONDS="0.2",
                **env,
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@pytest.fixture
def start_connector(transactional_db):
    started: list[ConnectorProcess] = []

    def start(url: str) -> ConnectorProcess:
        connector = ConnectorProcess(url)
        started.append(connector)
        return connector

    yield start
    for connector in started:
        connector.stop()


@pytest.fixture
def wecom_longconn():
    with LongConnSimulatorThread(bots={BOT_ID: SECRET}) as sim:
        yield sim


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_one_to_one_and_group_mention_end_to_end_with_feedback(
    long_bot, wecom_longconn, start_worker, start_connector
):
    start_worker()
    start_connector(wecom_longconn.url)
    wecom_longconn.wait_subscribed(BOT_ID, timeout=60)
    # A 1:1 question and a group mention, both answered to the end over the long connection
    single = wecom_longconn.ask(BOT_ID, "年假怎么算", userid="zhangsan", timeout=180)
    group = wecom_longconn.ask(
        BOT_ID, "报销流程是什么", userid="lisi", chatid="grp-hr", bot_name="HR助手", timeout=180
    )
    for answer in (single, group):
        assert answer.finished, answer
        assert answer.finish_frames == 1
        turn = turn_terminal(answer.msgid, timeout=60)
        assert turn.status == Turn.Status.ANSWERED
        # The feedback id rides on the first frame, and it is the turn's stream id
        assert answer.feedback_id == turn.stream_id
        assert answer.content.strip() and turn.answer.strip() in answer.content
    group_turn = Turn.objects.get(msgid=group.msgid)
    assert group_turn.conversation.chat_id == "grp-hr"
    assert group_turn.question == "报销流程是什么"  # the mention stripped, as for callbacks
    # When the employee gives 👎 on the 1:1 answer, it is stored against that turn
    wecom_longconn.push_event(
        BOT_ID,
        EVENT_FEEDBACK,
        userid="zhangsan",
        detail={"id": single.feedback_id, "type": 2, "inaccurate_reason_list": [1]},
    )
    deadline = time.monotonic() + 30
    turn = Turn.objects.get(msgid=single.msgid)
    while turn.feedback is None and time.monotonic() < deadline:
        time.sleep(0.2)
        turn.refresh_from_db()
    assert turn.feedback == Turn.Feedback.INACCURATE
    assert turn.feedback_detail == {"inaccurate_reason_list": [1]}
    state = LongConnection.objects.get(bot=long_bot)
    assert state.phase == "connected" and state.connected_since is not None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_connector_killed_mid_stream_another_takes_over_and_answers_once(
    make_bot, wecom_longconn, start_worker, start_connector
):
    bot = make_bot(
        connection_mode=Bot.ConnectionMode.LONG_CONNECTION,
        aibotid=BOT_ID,
        longconn_secret=SECRET,
        token="",
        encoding_aes_key="",
        max_tokens=160,
    )
    start_worker()
    first = start_connector(wecom_longconn.url)
    second = start_connector(wecom_longconn.url)
    wecom_longconn.wait_subscribed(BOT_ID, timeout=60)
    time.sleep(1.5)
    # Exactly one of the two replicas subscribed the bot
    assert wecom_longconn.sim.successful_subscribes(BOT_ID) == 1
    holder = LongConnection.objects.get(bot=bot).holder
    victim, survivor = (first, second) if f":{first.process.pid}:" in holder else (second, first)
    assert f":{victim.process.pid}:" in holder
    started = time.monotonic()
    frame = wecom_longconn.push_text(
        BOT_ID, "Explain in detail how annual leave is calculated.", userid="wangwu"
    )
    # When the holder is killed (-9) after the answer's first frame, mid-stream
    wecom_longconn.call(
        wecom_longconn.sim.wait_until(
            lambda: any(r.errcode == 0 for r in wecom_longconn.sim.replies(frame.req_id)), 120
        )
    )
    victim.kill()
    answer = wecom_longconn.answer(frame, started=started, timeout=240)
    # Then the other replica took the bot over and the answer ended exactly once
    assert answer.finished
    assert answer.finish_frames == 1
    assert wecom_longconn.sim.successful_subscribes(BOT_ID) == 2
    assert f":{survivor.process.pid}:" in LongConnection.objects.get(bot=bot).holder
    turn = turn_terminal(answer.msgid, timeout=120)
    assert turn.status in (Turn.Status.ANSWERED, Turn.Status.FAILED)
    deadline = time.monotonic() + 30
    while not _delivered(answer.msgid):
        assert time.monotonic() < deadline, "the final frame was never recorded"
        time.sleep(0.1)
    if turn.status == Turn.Status.ANSWERED:
        assert turn.answer.strip() in answer.content
    time.sleep(2)  # no late duplicate from anyone
    finals = [
        r
        for r in wecom_longconn.sim.replies(frame.req_id)
        if r.errcode == 0 and r.frame.body["stream"]["finish"] is True
    ]
    assert len(finals) == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_wecom_sim_drives_a_long_connection_bot(long_bot, start_connector):
    import io
    import json
    import socket

    from django.core.management import call_command

    # Refused at admission, so the exchange needs the connector but no model worker
    long_bot.allowed_userids = ["someone-else"]
    long_bot.save()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start_connector(f"ws://127.0.0.1:{port}")
    out = io.StringIO()
    call_command(
        "wecom_sim", long_bot.slug, "你好", "--port", str(port), "--json", "--timeout", "60",
        stdout=out, stderr=io.StringIO(),
    )  # fmt: skip
    result = json.loads(out.getvalue())
    turn = Turn.objects.get(bot=long_bot)
    assert result["finished"] and result["answer"] == turn.answer
    assert result["feedback_id"] == turn.stream_id


@pytest.mark.django_db(transaction=True)
def test_enter_chat_gets_the_welcome_and_a_changed_bot_reconnects(long_bot):
    simulator = LongConnSimulator(bots={BOT_ID: SECRET, "aib-other": "other-secret"})
    sent = {}

    async def welcomed_then_moved(sim: LongConnSimulator) -> bool:
        if "event" not in sent:
            if not sim.subscribed(BOT_ID):
                return False
            sent["event"] = await sim.push_event(BOT_ID, "enter_chat", userid="zhaoliu")
        if "moved" not in sent:
            replies = sim.replies(sent["event"].req_id, cmd="aibot_respond_welcome_msg")
            if not any(r.errcode == 0 for r in replies):
                return False
            # When an admin changes the bot's BotID and Secret, the connector follows
            sent["moved"] = True
            await sync_to_async(_bot_move)(long_bot.pk)
        return sim.subscribed("aib-other") and not sim.subscribed(BOT_ID)

    _run_connector(simulator, welcomed_then_moved, timeout=30)
    welcome = simulator.replies(sent["event"].req_id, cmd="aibot_respond_welcome_msg")
    assert [r.errcode for r in welcome] == [0]
    assert welcome[0].frame.body == {"msgtype": "text", "text": {"content": "欢迎使用HR助手"}}
    assert simulator.successful_subscribes("aib-other") == 1


def _bot_move(pk: int) -> None:
    bot = Bot.objects.get(pk=pk)
    bot.aibotid, bot.longconn_secret = "aib-other", "other-secret"
    bot.save()


# --- the welcome card (both modes) -------------------------------------------------------------

QUESTIONS = "年假怎么算\n报销流程是什么\n"


def test_card_buttons_ask_the_question_they_showed_even_after_a_reorder():
    from wecom.cards import clicked_question, welcome_card

    card = welcome_card(title="HR助手", description="欢迎", questions=["年假怎么算", "报销"])
    buttons = card["template_card"]["button_list"]
    assert [b["text"] for b in buttons] == ["年假怎么算", "报销"]
    event = {"template_card_event": {"event_key": buttons[1]["key"]}}
    assert clicked_question(event, ["报销", "年假怎么算"]) == "报销"
    assert clicked_question(event, ["年假怎么算"]) is None  # the suggestion was removed
    assert clicked_question({"template_card_event": {"event_key": "other"}}, ["报销"]) is None


@pytest.mark.django_db(transaction=True)
def test_welcome_card_over_the_long_connection_and_a_click_asks_its_question(long_bot):
    # Refused at admission (user not allowed), so the answer comes without a model worker
    long_bot.welcome_questions = QUESTIONS
    long_bot.allowed_userids = ["someone-else"]
    long_bot.save()
    simulator = LongConnSimulator(bots={BOT_ID: SECRET})
    sent = {}

    async def clicked_and_answered(sim: LongConnSimulator) -> bool:
        if "enter" not in sent:
            if not sim.subscribed(BOT_ID):
                return False
            sent["enter"] = await sim.push_event(BOT_ID, "enter_chat", userid="zhaoliu")
        if "click" not in sent:
            welcome = sim.replies(sent["enter"].req_id, cmd="aibot_respond_welcome_msg")
            if not welcome:
                return False
            sent["card"] = welcome[0].frame.body
            key = sent["card"]["template_card"]["button_list"][1]["key"]
            sent["click"] = await sim.push_event(
                BOT_ID,
                "template_card_event",
                userid="zhaoliu",
                detail={"card_type": "button_interaction", "event_key": key},
            )
        return await sync_to_async(_delivered)(sent["click"].body["msgid"])

    _run_connector(simulator, clicked_and_answered, timeout=30)
    card = sent["card"]["template_card"]
    assert card["main_title"]["desc"] == "欢迎使用HR助手"
    assert [b["text"] for b in card["button_list"]] == ["年假怎么算", "报销流程是什么"]
    turn = Turn.objects.get(msgid=sent["click"].body["msgid"])
    assert turn.question == "报销流程是什么"
    assert turn.longconn_req_id == sent["click"].req_id and turn.longconn_delivered_at


@pytest.mark.django_db(transaction=True)
def test_welcome_card_and_click_in_callback_mode(make_bot, simulator_for):
    bot = make_bot(welcome_questions=QUESTIONS)
    sim = simulator_for(bot)
    card = sim.decrypt_reply(sim.post_message(sim.event_message("enter_chat", userid="u1")))
    assert card["msgtype"] == "template_card"
    key = card["template_card"]["button_list"][0]["key"]
    event = {"template_card_event": {"card_type": "button_interaction", "event_key": key}}
    click = sim.event_message("template_card_event", userid="u1", event=event)
    reply = sim.decrypt_reply(sim.post_message(click))
    turn = Turn.objects.get(msgid=click["msgid"])
    assert turn.question == "年假怎么算"
    assert reply["msgtype"] == "stream" and reply["stream"]["id"] == turn.stream_id


# --- feedback id on the first reply (callback mode; the long connection is tested above) --------


@pytest.mark.django_db(transaction=True)
def test_callback_first_reply_carries_the_feedback_id(bot, simulator_for):
    sim = simulator_for(bot)
    first = sim.decrypt_reply(sim.post_message(sim.text_message("hi", userid="u1")))
    turn = Turn.objects.get()
    assert first["stream"]["finish"] is False
    assert first["stream"]["feedback"] == {"id": turn.stream_id}
    # A refresh while the answer is unfinished does not repeat it
    refresh = sim.decrypt_reply(
        sim.post_message(sim.stream_refresh_message(turn.stream_id, userid="u1"))
    )
    assert "feedback" not in refresh["stream"]


@pytest.mark.django_db(transaction=True)
def test_dropped_socket_reconnects_resubscribes_and_answers(long_bot):
    long_bot.allowed_userids = ["someone-else"]
    long_bot.save()
    simulator = LongConnSimulator(bots={BOT_ID: SECRET})
    sent = {}

    async def answered_after_drop(sim: LongConnSimulator) -> bool:
        if "dropped" not in sent:
            if not sim.subscribed(BOT_ID):
                return False
            sent["dropped"] = True
            await sim.drop(BOT_ID)  # no close frame: a failing network
        if "frame" not in sent:
            if not sim.subscribed(BOT_ID):
                return False
            sent["frame"] = await sim.push_text(BOT_ID, "还在吗", userid="lisi")
        return await sync_to_async(_delivered)(sent["frame"].body["msgid"])

    _run_connector(simulator, answered_after_drop, timeout=30, backoff_seconds=0.1)
    assert simulator.successful_subscribes(BOT_ID) == 2
    turn = Turn.objects.get(msgid=sent["frame"].body["msgid"])
    assert turn.longconn_delivered_at is not None

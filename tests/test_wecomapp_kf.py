"""微信客服 through the app door: pulled with a durable cursor, answered once, handed over.

Given an app that manages a 微信客服 account and the loopback simulator's desk, when
customers write, then each question becomes one external turn (however often the messages
are pulled, crashes included), the answer goes out through `kf/send_msg`, and a customer
who asks for a person (or a question the bot cannot answer) moves the session to the
people's queue.
"""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from apps.bots.models import Turn
from apps.bots.services.push import turn_push
from apps.wecomapp import kf as kf_service
from apps.wecomapp.kf import kf_messages_sync
from apps.wecomapp.models import AppDelivery, KfCursor, KfSession, WeComApp
from tests.conftest import turn_terminal
from wecom.crypto import generate_encoding_aes_key, generate_token
from wecom.kf import STATE_NEW, STATE_POOL
from wecom.simulator_app import AppApiServer, AppCallbackBuilder

CORP_ID = "ww0123456789abcdef"
AGENT_ID = 1000003
SECRET = "kf-secret-0123456789"
KFID = "wkAJ2GCAAAZSfhHCt7IFSvLKtMPxyJTw"
CUSTOMER = "wmAJ2GCAAAme1XQRC-NI-q0_ZM9ukoAw"


@pytest.fixture
def kf_api(settings):
    with AppApiServer(
        corp_id=CORP_ID, secret=SECRET, agent_id=AGENT_ID, users=set(), open_kfids={KFID}
    ) as server:
        settings.WECOM_API_BASE = server.base_url
        yield server


@pytest.fixture
def kf_app(bot):
    return WeComApp.objects.create(
        name="客服",
        slug="kf",
        bot=bot,
        corp_id=CORP_ID,
        agent_id=AGENT_ID,
        secret=SECRET,
        token=generate_token(),
        encoding_aes_key=generate_encoding_aes_key(),
    )


def _event_post(client, app: WeComApp, token: str):
    builder = AppCallbackBuilder(
        token=app.token, encoding_aes_key=app.encoding_aes_key, corp_id=CORP_ID, agent_id=AGENT_ID
    )
    body, params = builder.envelope(builder.kf_event_xml(token=token, open_kfid=KFID))
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return client.generic(
        "POST", f"{app.callback_path()}?{query}", data=body, content_type="text/xml"
    )


def _answer(turn: Turn, text: str, **fields) -> None:
    """Stand in for the worker: the turn ends answered (its push is what is tested)."""
    Turn.objects.filter(pk=turn.pk).update(
        status=Turn.Status.ANSWERED, answer=text, finished_at=timezone.now(), **fields
    )


@pytest.mark.django_db
def test_the_event_is_acknowledged_at_once_and_the_pull_enqueued(
    client, kf_api, kf_app, django_capture_on_commit_callbacks, app_callback_on_test_thread
):
    token = kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="你好")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = _event_post(client, kf_app, token)
    assert response.status_code == 200 and response.content == b""
    assert len(callbacks) == 1  # the kf_sync task, sent after the commit
    assert not Turn.objects.exists()


@pytest.mark.django_db
def test_customer_questions_become_external_turns_answered_through_send_msg(kf_api, kf_app):
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="你们几点营业？")

    assert kf_messages_sync(app=kf_app, open_kfid=KFID) == 1

    turn = Turn.objects.get()
    assert turn.channel == Turn.Channel.KF
    assert turn.msgid.startswith("kf:")
    assert turn.conversation.external is True  # only knowledge open to external users
    assert turn.conversation.userid == CUSTOMER
    _answer(turn, "我们每天 9:00–18:00 营业。")
    assert turn_push(turn_id=turn.pk, final_try=True) is True
    assert kf_api.kf.texts_to(CUSTOMER) == ["我们每天 9:00–18:00 营业。"]


@pytest.mark.django_db
def test_a_crash_between_pull_and_send_neither_loses_nor_repeats_a_question(kf_api, kf_app):
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="退货地址？")
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="运费谁出？")
    assert kf_messages_sync(app=kf_app, open_kfid=KFID) == 2
    # The process dies here: turns recorded, nothing sent. After the restart the next event
    # pulls from the stored cursor.
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="多久到账？")
    assert kf_messages_sync(app=kf_app, open_kfid=KFID) == 1
    assert kf_messages_sync(app=kf_app, open_kfid=KFID) == 0

    turns = list(Turn.objects.order_by("pk"))
    assert [t.question for t in turns] == ["退货地址？", "运费谁出？", "多久到账？"]
    for turn in turns:
        _answer(turn, f"答：{turn.question}")
    for turn in turns + turns:  # the sweeper enqueueing a push twice sends nothing twice
        turn_push(turn_id=turn.pk, final_try=True)
    assert kf_api.kf.texts_to(CUSTOMER) == ["答：退货地址？", "答：运费谁出？", "答：多久到账？"]


@pytest.mark.django_db
def test_a_crash_while_recording_a_page_keeps_the_cursor_and_pulls_the_page_again(
    kf_api, kf_app, monkeypatch
):
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="第一问")
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="第二问")
    real = kf_service.mention_receive
    calls = []

    def dies_on_the_second(**kwargs):
        calls.append(kwargs["message"].msgid)
        if len(calls) == 2:
            raise SystemExit("worker killed")
        return real(**kwargs)

    monkeypatch.setattr(kf_service, "mention_receive", dies_on_the_second)
    with pytest.raises(SystemExit):
        kf_messages_sync(app=kf_app, open_kfid=KFID)
    assert not Turn.objects.exists()
    assert KfCursor.objects.get(app=kf_app, open_kfid=KFID).cursor == ""

    monkeypatch.setattr(kf_service, "mention_receive", real)
    assert kf_messages_sync(app=kf_app, open_kfid=KFID) == 2
    assert sorted(Turn.objects.values_list("question", flat=True)) == ["第一问", "第二问"]


@pytest.mark.django_db
def test_asking_for_a_person_hands_the_session_over_and_the_bot_stays_silent(kf_api, kf_app):
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="转人工")
    assert kf_messages_sync(app=kf_app, open_kfid=KFID) == 0

    assert kf_api.kf.states[(KFID, CUSTOMER)] == STATE_POOL
    session = KfSession.objects.get(external_userid=CUSTOMER)
    assert session.handled_by == KfSession.HandledBy.HUMAN
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="在吗？")
    assert kf_messages_sync(app=kf_app, open_kfid=KFID) == 0  # a person answers now

    kf_api.kf.session_end(open_kfid=KFID, external_userid=CUSTOMER)
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="再问一个")
    assert kf_messages_sync(app=kf_app, open_kfid=KFID) == 1
    session.refresh_from_db()
    assert session.handled_by == KfSession.HandledBy.BOT
    assert kf_api.kf.states[(KFID, CUSTOMER)] == STATE_NEW
    assert list(Turn.objects.values_list("question", flat=True)) == ["再问一个"]


@pytest.mark.django_db
def test_a_question_the_bot_cannot_answer_is_handed_to_a_person_after_the_reply(kf_api, kf_app):
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="发票抬头怎么改？")
    kf_messages_sync(app=kf_app, open_kfid=KFID)
    turn = Turn.objects.get()
    _answer(turn, "抱歉，我没有找到相关资料。", fixed_reply_reason="no_relevant_source")

    assert turn_push(turn_id=turn.pk, final_try=True) is True

    assert kf_api.kf.texts_to(CUSTOMER) == ["抱歉，我没有找到相关资料。"]
    assert kf_api.kf.states[(KFID, CUSTOMER)] == STATE_POOL
    assert KfSession.objects.get().handled_by == KfSession.HandledBy.HUMAN


@pytest.mark.django_db
def test_a_reply_after_the_window_closed_is_recorded_as_undelivered(kf_api, kf_app):
    kf_api.kf.customer_says(open_kfid=KFID, external_userid=CUSTOMER, text="还在吗")
    kf_messages_sync(app=kf_app, open_kfid=KFID)
    turn = Turn.objects.get()
    _answer(turn, "在的")
    kf_api.kf.clock = lambda: time.time() + 49 * 3600

    assert turn_push(turn_id=turn.pk, final_try=False) is False

    turn.refresh_from_db()
    assert turn.push_error.startswith("95018 ")
    assert AppDelivery.objects.get(turn=turn).parts_sent == 0


def test_a_customer_asks_and_the_worker_answers_through_send_msg(
    client, kf_api, kf_app, start_worker
):
    start_worker(WECOM_API_BASE=kf_api.base_url)
    token = kf_api.kf.customer_says(
        open_kfid=KFID, external_userid=CUSTOMER, text="What is the capital of France?"
    )

    assert _event_post(client, kf_app, token).status_code == 200

    deadline = time.monotonic() + 60
    while not Turn.objects.exists():
        assert time.monotonic() < deadline, "the messages were never pulled"
        time.sleep(0.1)
    turn = turn_terminal(Turn.objects.get().msgid)
    while turn.pushed_at is None and not turn.push_error:
        assert time.monotonic() < deadline, "the answer was never pushed"
        time.sleep(0.1)
        turn.refresh_from_db()
    assert turn.push_error == ""
    assert "".join(kf_api.kf.texts_to(CUSTOMER)) == turn.answer

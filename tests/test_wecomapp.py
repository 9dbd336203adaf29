"""The self-built app door: XML callbacks in, answers out through the simulated message/send.

Given an app answered by a bot and the loopback app API, when WeCom (the callback builder,
wechatpy's enterprise crypto with receiveid = the CorpID) posts a member's message, then
the callback is acknowledged empty, the turn is recorded once, and the ended turn's answer
reaches the member in numbered parts through `message/send`.
"""

from __future__ import annotations

import time

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import OperatorAuditEntry
from apps.bots.models import Conversation, Turn
from apps.bots.services.push import PushError, turn_push
from apps.wecomapp.models import AppDelivery, WeComApp
from apps.wecomapp.services import app_thinking_notice
from tests.conftest import turn_terminal
from wecom.app import TEXT_MAX_BYTES, message_parts, part_number_strip
from wecom.crypto import generate_encoding_aes_key, generate_token
from wecom.simulator_app import AppApiServer, AppCallbackBuilder

CORP_ID = "ww0123456789abcdef"
AGENT_ID = 1000002
SECRET = "app-secret-0123456789"
MEMBER = "zhangsan"


@pytest.fixture
def app_api(settings):
    with AppApiServer(corp_id=CORP_ID, secret=SECRET, agent_id=AGENT_ID, users={MEMBER}) as server:
        settings.WECOM_API_BASE = server.base_url
        yield server


@pytest.fixture
def wecom_app(bot):
    return WeComApp.objects.create(
        name="HR app",
        slug="hr-app",
        bot=bot,
        corp_id=CORP_ID,
        agent_id=AGENT_ID,
        secret=SECRET,
        token=generate_token(),
        encoding_aes_key=generate_encoding_aes_key(),
        test_userid=MEMBER,
    )


def _builder(app: WeComApp, **overrides) -> AppCallbackBuilder:
    values = {
        "token": app.token,
        "encoding_aes_key": app.encoding_aes_key,
        "corp_id": app.corp_id,
        "agent_id": app.agent_id,
    }
    values.update(overrides)
    return AppCallbackBuilder(**values)


def _post(client, app: WeComApp, body: bytes, params: dict[str, str]):
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return client.generic(
        "POST", f"{app.callback_path()}?{query}", data=body, content_type="text/xml"
    )


def _ask(client, app: WeComApp, content: str, msgid: str = "7000000001"):
    builder = _builder(app)
    body, params = builder.envelope(builder.text_xml(userid=MEMBER, content=content, msgid=msgid))
    return _post(client, app, body, params), body, params


def _ended_turn(app: WeComApp, answer: str) -> Turn:
    conversation, _created = Conversation.objects.get_or_create(bot=app.bot, userid=MEMBER)
    now = timezone.now()
    turn = Turn.objects.create(
        bot=app.bot,
        conversation=conversation,
        msgid=f"app:{time.time_ns()}",
        stream_id=f"s{time.time_ns()}",
        question="q",
        answer=answer,
        status=Turn.Status.ANSWERED,
        channel=Turn.Channel.APP,
        received_at=now,
        finished_at=now,
    )
    AppDelivery.objects.create(turn=turn, app=app, touser=MEMBER)
    return turn


# -- the callback ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_url_verification_answers_the_echo_decrypted_with_the_corp_id(client, wecom_app):
    params = _builder(wecom_app).verify_params("echo-8472")
    response = client.get(wecom_app.callback_path(), params)
    assert response.status_code == 200
    assert response.content == b"echo-8472"
    wecom_app.refresh_from_db()
    assert wecom_app.url_verified_at is not None

    params["msg_signature"] = "0" * 40
    assert client.get(wecom_app.callback_path(), params).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_a_member_message_becomes_one_app_turn_acknowledged_empty(client, wecom_app):
    response, _body, _params = _ask(client, wecom_app, "年假怎么申请？")

    assert response.status_code == 200
    assert response.content == b""
    turn = Turn.objects.get()
    assert turn.msgid == "app:7000000001"
    assert turn.channel == Turn.Channel.APP
    assert turn.question == "年假怎么申请？"
    assert turn.conversation.userid == MEMBER
    assert turn.conversation.external is False
    delivery = AppDelivery.objects.get()
    assert (delivery.turn_id, delivery.app_id, delivery.touser) == (turn.pk, wecom_app.pk, MEMBER)


@pytest.mark.django_db(transaction=True)
def test_a_redelivered_callback_is_recorded_once(client, wecom_app):
    first, body, params = _ask(client, wecom_app, "报销流程？")
    again = _post(client, wecom_app, body, params)  # WeCom's retry after 5 s: same bytes
    builder = _builder(wecom_app)
    fresh_body, fresh_params = builder.envelope(
        builder.text_xml(userid=MEMBER, content="报销流程？", msgid="7000000001")
    )
    third = _post(client, wecom_app, fresh_body, fresh_params)  # same MsgId, new envelope

    assert [first.status_code, again.status_code, third.status_code] == [200, 200, 200]
    assert Turn.objects.count() == 1
    assert AppDelivery.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_events_are_acknowledged_without_a_turn(client, wecom_app):
    builder = _builder(wecom_app)
    body, params = builder.envelope(builder.event_xml(userid=MEMBER, event="enter_agent"))
    response = _post(client, wecom_app, body, params)
    assert response.status_code == 200
    assert not Turn.objects.exists()


def _refusal_cases(app: WeComApp) -> dict[str, tuple[int, bytes, dict[str, str]]]:
    good = _builder(app)
    plain = good.text_xml(userid=MEMBER, content="hi", msgid="1")
    body, params = good.envelope(plain)
    other_corp = _builder(app, corp_id="wwsomeoneelse")
    wrong_corp_body, wrong_corp_params = other_corp.envelope(
        plain.replace(app.corp_id, "wwsomeoneelse")
    )
    other_token = _builder(app, token=generate_token())
    forged_body, forged_params = other_token.envelope(plain)
    stale_body, stale_params = good.envelope(plain, timestamp=str(int(time.time()) - 3600))
    other_agent = _builder(app, agent_id=AGENT_ID + 1)
    agent_body, agent_params = other_agent.envelope(
        other_agent.text_xml(userid=MEMBER, content="hi", msgid="2")
    )
    not_xml_body, not_xml_params = b'{"encrypt": "abc"}', dict(params)
    return {
        "bad XML": (400, b"<xml><Encrypt>", params),
        "not XML": (400, not_xml_body, not_xml_params),
        "entity expansion": (
            400,
            b'<!DOCTYPE x [<!ENTITY a "aaaa">]><xml><Encrypt>&a;</Encrypt></xml>',
            params,
        ),
        "bad signature": (403, body, {**params, "msg_signature": "f" * 40}),
        "wrong token": (403, forged_body, forged_params),
        "wrong receiveid": (400, wrong_corp_body, wrong_corp_params),
        "stale timestamp": (403, stale_body, stale_params),
        "other agent": (400, agent_body, agent_params),
        "missing signature": (400, body, {"timestamp": params["timestamp"], "nonce": "1"}),
    }


@pytest.mark.django_db(transaction=True)
def test_bad_callbacks_get_the_ai_bot_callbacks_refusals_and_store_nothing(client, wecom_app):
    for name, (status, body, params) in _refusal_cases(wecom_app).items():
        response = _post(client, wecom_app, body, params)
        assert response.status_code == status, name
    assert not Turn.objects.exists()
    assert not AppDelivery.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_unknown_or_disabled_app_is_not_found(client, wecom_app):
    body, params = _builder(wecom_app).envelope("<xml/>")
    WeComApp.objects.filter(pk=wecom_app.pk).update(enabled=False)
    assert _post(client, wecom_app, body, params).status_code == 404


# -- the answer through message/send -------------------------------------------------------


def test_long_answers_split_into_numbered_parts_that_join_to_the_answer():
    answer = "".join(f"第{n}段：员工每年享有带薪年假，具体天数按工龄计算。\n\n" for n in range(120))
    assert len(answer.encode()) > 6000

    parts = message_parts(answer, limit_bytes=TEXT_MAX_BYTES)

    assert len(parts) >= 3
    assert all(len(part.encode()) <= TEXT_MAX_BYTES for part in parts)
    assert [part.split(")", 1)[0] for part in parts] == [
        f"({n}/{len(parts)}" for n in range(1, len(parts) + 1)
    ]
    assert "".join(part_number_strip(part) for part in parts) == answer
    assert message_parts("短答案", limit_bytes=TEXT_MAX_BYTES) == ["短答案"]


@pytest.mark.django_db(transaction=True)
def test_a_6000_byte_answer_arrives_as_ordered_parts(app_api, wecom_app):
    answer = "".join(f"第{n}条：请在系统中提交申请，并由直属主管审批。" for n in range(120))
    assert len(answer.encode()) >= 6000
    turn = _ended_turn(wecom_app, answer)

    assert turn_push(turn_id=turn.pk, final_try=True) is True

    received = app_api.contents(touser=MEMBER)
    assert len(received) >= 3
    assert all(len(part.encode()) <= TEXT_MAX_BYTES for part in received)
    assert "".join(part_number_strip(part) for part in received) == answer
    turn.refresh_from_db()
    assert turn.pushed_at is not None and turn.push_error == ""


@pytest.mark.django_db(transaction=True)
def test_a_token_expiring_mid_answer_is_refreshed_once(app_api, wecom_app):
    answer = "".join(f"第{n}条：加班需提前申请。" for n in range(300))
    turn = _ended_turn(wecom_app, answer)
    app_api.tokens_expire_after = 1  # the token dies right after the first part

    assert turn_push(turn_id=turn.pk, final_try=True) is True

    assert app_api.token_fetches == 2
    assert app_api.refusals == [("/cgi-bin/message/send", 42001)]
    assert "".join(part_number_strip(p) for p in app_api.contents(touser=MEMBER)) == answer


@pytest.mark.django_db(transaction=True)
def test_a_rate_limited_part_is_retried_without_resending_the_earlier_ones(app_api, wecom_app):
    answer = "".join(f"第{n}条：出差报销需附发票。" for n in range(300))
    turn = _ended_turn(wecom_app, answer)
    app_api.fail_next(45009, after=1)  # the second part is throttled

    with pytest.raises(PushError) as refused:
        turn_push(turn_id=turn.pk, final_try=False)
    assert refused.value.retryable and refused.value.errcode == 45009
    assert AppDelivery.objects.get(turn=turn).parts_sent == 1

    assert turn_push(turn_id=turn.pk, final_try=False) is True  # the task's retry

    received = app_api.contents(touser=MEMBER)
    assert len(received) == len(message_parts(answer, limit_bytes=TEXT_MAX_BYTES))
    assert "".join(part_number_strip(part) for part in received) == answer


@pytest.mark.django_db(transaction=True)
def test_a_final_refusal_marks_the_turn_undelivered_with_wecoms_error(app_api, wecom_app):
    turn = _ended_turn(wecom_app, "答案")
    AppDelivery.objects.filter(turn=turn).update(touser="left-the-company")

    assert turn_push(turn_id=turn.pk, final_try=False) is False

    turn.refresh_from_db()
    assert turn.pushed_at is None
    assert turn.push_error.startswith("81013 ")
    assert app_api.contents() == []


@pytest.mark.django_db
def test_a_slow_first_token_gets_one_thinking_notice(
    client, app_api, wecom_app, django_capture_on_commit_callbacks, app_callback_on_test_thread
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        _ask(client, wecom_app, "年假几天？")
    assert len(callbacks) == 2  # the answer's enqueue and the notice's, after the commit
    turn = Turn.objects.get()

    assert app_thinking_notice(turn_id=turn.pk) is True
    assert app_thinking_notice(turn_id=turn.pk) is False  # once

    assert app_api.contents(touser=MEMBER) == ["正在思考，稍后给你答案。"]


@pytest.mark.django_db(transaction=True)
def test_no_thinking_notice_once_the_model_started_or_the_turn_ended(app_api, wecom_app):
    started = _ended_turn(wecom_app, "")
    Turn.objects.filter(pk=started.pk).update(
        status=Turn.Status.GENERATING, first_token_at=timezone.now()
    )
    ended = _ended_turn(wecom_app, "答案")

    assert app_thinking_notice(turn_id=started.pk) is False
    assert app_thinking_notice(turn_id=ended.pk) is False
    assert app_api.contents() == []


# -- admin ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_admin_creates_an_app_with_write_only_secrets_and_shows_its_callback_url(admin_client, bot):
    key = generate_encoding_aes_key()
    data = {
        "name": "IT app",
        "slug": "it-app",
        "enabled": "on",
        "bot": bot.pk,
        "corp_id": CORP_ID,
        "agent_id": str(AGENT_ID),
        "message_format": "text",
        "thinking_notice_seconds": "10",
        "test_userid": MEMBER,
        "new_secret": "S3cretValue",
        "new_token": "Tok3nTok3n",
        "new_encoding_aes_key": key,
    }
    response = admin_client.post(reverse("admin:wecomapp_wecomapp_add"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    app = WeComApp.objects.get(slug="it-app")
    assert (app.secret, app.token, app.encoding_aes_key) == ("S3cretValue", "Tok3nTok3n", key)

    page = admin_client.get(reverse("admin:wecomapp_wecomapp_change", args=[app.pk]))
    html = page.content.decode()
    assert app.callback_url() in html and "/wecom/app/it-app/callback" in html
    assert "S3cretValue" not in html and "Tok3nTok3n" not in html and key not in html
    entry = OperatorAuditEntry.objects.get(action="wecomapp.wecomapp.create")
    assert "S3cretValue" not in str(entry.after)

    data.update(new_secret="", new_token="", new_encoding_aes_key="", name="IT app 2")
    response = admin_client.post(reverse("admin:wecomapp_wecomapp_change", args=[app.pk]), data)
    assert response.status_code == 302
    app.refresh_from_db()
    assert app.name == "IT app 2" and app.secret == "S3cretValue"  # empty keeps the stored one


@pytest.mark.django_db(transaction=True)
def test_admin_send_test_message_reaches_the_test_recipient(admin_client, app_api, wecom_app):
    changelist = reverse("admin:wecomapp_wecomapp_changelist")
    response = admin_client.post(
        changelist,
        {"action": "send_test_message", "_selected_action": [wecom_app.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert len(app_api.contents(touser=MEMBER)) == 1
    assert OperatorAuditEntry.objects.filter(action="wecomapp.wecomapp.test_message").exists()

    WeComApp.objects.filter(pk=wecom_app.pk).update(test_userid="nobody")
    response = admin_client.post(
        changelist,
        {"action": "send_test_message", "_selected_action": [wecom_app.pk]},
        follow=True,
    )
    assert "81013" in response.content.decode()
    assert len(app_api.contents(touser=MEMBER)) == 1


# -- end to end ---------------------------------------------------------------------------


def test_an_app_member_asks_and_receives_the_answer_through_message_send(
    client, app_api, wecom_app, start_worker
):
    WeComApp.objects.filter(pk=wecom_app.pk).update(thinking_notice_seconds=0)  # answer only
    start_worker(WECOM_API_BASE=app_api.base_url)

    response, body, params = _ask(client, wecom_app, "What is the capital of France?")
    again = _post(client, wecom_app, body, params)
    assert (response.status_code, again.status_code) == (200, 200)

    turn = turn_terminal("app:7000000001")
    deadline = time.monotonic() + 30
    while turn.pushed_at is None and not turn.push_error:
        assert time.monotonic() < deadline, "the answer was never pushed"
        time.sleep(0.1)
        turn.refresh_from_db()
    assert turn.status == Turn.Status.ANSWERED
    assert turn.push_error == ""
    received = app_api.contents(touser=MEMBER)
    assert "".join(part_number_strip(part) for part in received) == turn.answer
    assert Turn.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_admin_shows_an_undelivered_answer_with_wecoms_error(admin_client, app_api, wecom_app):
    turn = _ended_turn(wecom_app, "答案")
    AppDelivery.objects.filter(turn=turn).update(touser="left-the-company")
    turn_push(turn_id=turn.pk, final_try=True)

    page = admin_client.get(reverse("admin:wecomapp_appdelivery_changelist"))

    assert page.status_code == 200
    assert "81013 all touser invalid or unauthorized" in page.content.decode()
    assert admin_client.get(reverse("admin:wecomapp_kfsession_changelist")).status_code == 200


def test_wecom_app_sim_asks_the_app_and_its_customer_service(live_server, wecom_app, start_worker):
    import io
    import json
    import socket

    from django.core.management import call_command

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    WeComApp.objects.filter(pk=wecom_app.pk).update(thinking_notice_seconds=0)
    start_worker(WECOM_API_BASE=f"http://127.0.0.1:{port}")

    for extra in ([], ["--kf"]):
        out = io.StringIO()
        call_command(
            "wecom_app_sim",
            wecom_app.slug,
            "What is the capital of France?",
            "--url",
            live_server.url,
            "--port",
            str(port),
            "--json",
            *extra,
            stdout=out,
            stderr=io.StringIO(),
        )
        result = json.loads(out.getvalue())
        assert result["status"] == Turn.Status.ANSWERED and result["push_error"] == ""
        assert result["messages"]
    channels = sorted(Turn.objects.values_list("channel", flat=True))
    assert channels == [Turn.Channel.APP, Turn.Channel.KF]

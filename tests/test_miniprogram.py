"""Mini-program sign-in (jscode2session → JWT) and the chat endpoint's refusals."""
# ruff: noqa: F811 - pytest fixtures imported from tests.wechat are redefined as arguments

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from django.conf import settings as django_settings
from rest_framework_simplejwt.tokens import AccessToken

from apps.bots.models import Turn
from apps.wechat.auth import tokens_issue
from apps.wechat.models import MiniProgram
from tests.wechat import wechat_server  # noqa: F401

MINI_APP_ID = "wxMiniProgram000001"
MINI_SECRET = "mini-secret"


@pytest.fixture
def program(bot, wechat_server):
    wechat_server.app_add(MINI_APP_ID, MINI_SECRET)
    program = MiniProgram.objects.create(
        name="HR小程序", app_id=MINI_APP_ID, app_secret=MINI_SECRET, rate_limit_per_minute=2
    )
    program.bots.add(bot)
    return program


def _claims(token: str) -> dict:
    return jwt.decode(
        token,
        django_settings.SECRET_KEY,
        algorithms=["HS256"],
        audience="wecom-ai:miniprogram",
    )


def _bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_login_exchanges_the_code_for_tokens_about_the_openid(client, program, wechat_server):
    code = wechat_server.code_issue(MINI_APP_ID, "oUser1")
    response = client.post("/api/mp/login", {"code": code}, content_type="application/json")
    assert response.status_code == 200
    access = _claims(response.json()["access"])
    assert (access["sub"], access["openid"], access["mp"]) == ("oUser1", "oUser1", MINI_APP_ID)
    assert access["token_type"] == "access"
    assert _claims(response.json()["refresh"])["token_type"] == "refresh"


def test_login_subject_is_the_unionid_when_there_is_one(client, program, wechat_server):
    code = wechat_server.code_issue(MINI_APP_ID, "oUser1", unionid="uUnion1")
    response = client.post("/api/mp/login", {"code": code}, content_type="application/json")
    access = _claims(response.json()["access"])
    assert (access["sub"], access["openid"]) == ("uUnion1", "oUser1")


def test_bad_or_used_code_is_a_clear_401(client, program, wechat_server):
    code = wechat_server.code_issue(MINI_APP_ID, "oUser1")
    ok = client.post("/api/mp/login", {"code": code}, content_type="application/json")
    assert ok.status_code == 200
    for bad in (code, "not-a-code"):
        response = client.post("/api/mp/login", {"code": bad}, content_type="application/json")
        assert response.status_code == 401
        assert "wx.login" in response.json()["detail"]


def test_refresh_gives_a_new_access_token(client, program):
    tokens = tokens_issue(app_id=MINI_APP_ID, openid="oUser1")
    response = client.post(
        "/api/mp/token/refresh", {"refresh": tokens["refresh"]}, content_type="application/json"
    )
    assert response.status_code == 200
    assert _claims(response.json()["access"])["openid"] == "oUser1"
    bad = client.post(
        "/api/mp/token/refresh", {"refresh": tokens["access"]}, content_type="application/json"
    )
    assert bad.status_code == 401


def _chat(client, token: str, **body):
    payload = {"bot": "hr", "message": "年假有几天？", **body}
    return client.post("/api/mp/chat", payload, content_type="application/json", **_bearer(token))


def test_chat_without_or_with_an_expired_token_is_401(client, program):
    assert client.post("/api/mp/chat", {"bot": "hr", "message": "hi"}).status_code == 401
    expired = AccessToken()
    expired["openid"], expired["mp"], expired["sub"] = "oUser1", MINI_APP_ID, "oUser1"
    expired.set_exp(lifetime=-timedelta(seconds=1))
    assert _chat(client, str(expired)).status_code == 401
    assert not Turn.objects.exists()


def test_refresh_token_is_not_an_access_token(client, program):
    tokens = tokens_issue(app_id=MINI_APP_ID, openid="oUser1")
    assert _chat(client, tokens["refresh"]).status_code == 401


def test_chat_with_a_bot_outside_the_mini_program_is_404(client, program, make_bot):
    make_bot(slug="finance", name="财务")
    tokens = tokens_issue(app_id=MINI_APP_ID, openid="oUser1")
    assert _chat(client, tokens["access"], bot="finance").status_code == 404
    assert not Turn.objects.exists()


def test_chat_records_an_external_turn_and_streams_events(client, program):
    tokens = tokens_issue(app_id=MINI_APP_ID, openid="oUser1")
    response = _chat(client, tokens["access"], conversation="trip")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    turn = Turn.objects.select_related("conversation").get()
    assert turn.channel == Turn.Channel.MINIPROGRAM
    assert turn.conversation.external is True
    assert turn.conversation.userid == "oUser1"
    assert turn.conversation.chat_id == f"mini:{MINI_APP_ID}:trip"
    response.close()


def test_rate_limit_is_per_openid_and_answered_429(client, program):
    first = tokens_issue(app_id=MINI_APP_ID, openid="oUser1")["access"]
    other = tokens_issue(app_id=MINI_APP_ID, openid="oUser2")["access"]
    statuses = [_chat(client, first).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert _chat(client, other).status_code == 200
    assert Turn.objects.count() == 3

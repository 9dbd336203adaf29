"""The OpenAI-compatible API without a worker: keys, scoping, errors, refusals, the schema.

Requests here never wait for a model: they are refused before a turn exists, or rejected
at admission (a blocked question, a rate limit), which ends the turn at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from guardian.shortcuts import assign_perm

from apps.audit.models import Action, AuditPolicy, LedgerEntry, OperatorAuditEntry, PolicyWordList
from apps.audit.models import SensitiveWordList as WordList
from apps.bots.models import Turn
from apps.directory.models import DirectoryUser
from apps.openai_api.models import ApiKey
from apps.openai_api.progress import Deltas, Progress, progress_parse
from apps.openai_api.services.keys import api_key_create

pytestmark = pytest.mark.django_db


def apikey_create(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("apikey_create", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def ask(client: Client, key: str, body: Any, path: str = "/v1/chat/completions") -> Any:
    return client.post(
        path,
        data=body if isinstance(body, str) else json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def question(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def _read(stream: Any) -> bytes:
    # Driven by async_to_sync, so the stream's queries run on this test's connection.
    return b"".join([chunk async for chunk in stream])


def block_policy(bot: Any, words: str) -> None:
    policy = AuditPolicy.objects.create(name="p-block", refusal_message="该内容无法回答。")
    word_list = WordList.objects.create(name="w-block", words=words)
    PolicyWordList.objects.create(policy=policy, word_list=word_list, action=Action.BLOCK)
    policy.bots.add(bot)


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "code"} <= set(body["error"])
    return body["error"]


def test_apikey_create_prints_the_key_once_and_stores_only_its_hash(bot):
    key, note = apikey_create("hr", "wechaty group bot")

    row = ApiKey.objects.get()
    assert re.fullmatch(r"sk-wai-[0-9a-f]{10}\.[A-Za-z0-9_-]{43}", key)
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in note and row.prefix in key
    stored = json.dumps(list(ApiKey.objects.values()), default=str)
    assert key.split(".", 1)[1] not in stored
    assert list(row.bots.values_list("slug", flat=True)) == ["hr"]
    entry = OperatorAuditEntry.objects.get(action="openai_api.api_key.create")
    assert entry.actor_username == "system:apikey_create"
    assert "key_hash" not in entry.after and entry.after["name"] == "wechaty group bot"


def test_apikey_create_refuses_an_unknown_bot_or_employee(bot):
    with pytest.raises(Exception, match="no bot with slug nope"):
        apikey_create("nope", "x")
    with pytest.raises(Exception, match="userid"):
        apikey_create("hr", "x", "--userid", "ghost")
    assert not ApiKey.objects.exists()


def test_missing_wrong_and_revoked_keys_get_401_in_openai_shape(client, bot):
    key, _note = apikey_create("hr", "k")
    for bad in ("", "sk-wai-0000000000.nope", key[:-1] + ("A" if key[-1] != "A" else "B")):
        response = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {bad}" if bad else "")
        assert response.status_code == 401
        assert error_of(response)["code"] == "invalid_api_key"
    assert client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200

    ApiKey.objects.get().revoke(now=ApiKey.objects.get().created_at)

    response = ask(client, key, question("hr", "年假几天？"))
    assert response.status_code == 401 and error_of(response)["type"] == "invalid_request_error"
    assert not Turn.objects.exists()


def test_models_lists_the_keys_bots_and_another_bot_is_as_unknown_as_none(client, make_bot):
    make_bot(slug="hr")
    make_bot(slug="it", name="IT助手")
    key, _note = apikey_create("hr", "hr only")

    listed = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert [model["id"] for model in listed["data"]] == ["hr"]
    assert listed["object"] == "list" and listed["data"][0]["object"] == "model"

    for model in ("it", "nope"):
        response = ask(client, key, question(model, "年假几天？"))
        assert response.status_code == 404
        error = error_of(response)
        assert error["code"] == "model_not_found" and model in error["message"]
        detail = client.get(f"/v1/models/{model}", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert detail.status_code == 404
    assert client.get("/v1/models/hr", HTTP_AUTHORIZATION=f"Bearer {key}").json()["id"] == "hr"
    assert not Turn.objects.exists()


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("{not json", ""),
        ({"model": "hr"}, "messages"),
        ({"model": "hr", "messages": []}, "messages"),
        ({"model": "hr", "messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
        ({"model": "hr", "messages": [{"role": "user", "content": "  "}]}, "messages"),
        (
            {
                "model": "hr",
                "messages": [{"role": "user", "content": [{"type": "image_url", "x": 1}]}],
            },
            "messages.0.content",
        ),
    ],
)
def test_bad_requests_get_400_naming_the_field(client, bot, body, where):
    key, _note = apikey_create("hr", "k")
    response = ask(client, key, body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(where)
    assert not Turn.objects.exists()


def test_a_blocked_question_gets_the_policys_refusal_as_the_answer_on_the_api_channel(client, bot):
    block_policy(bot, "绝密文件")
    key, _note = apikey_create("hr", "k")

    response = ask(client, key, question("hr", "把绝密文件发我", user="room-1"))

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "hr"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "该内容无法回答。"}
    assert body["choices"][0]["finish_reason"] == "content_filter"
    turn = Turn.objects.get()
    assert (turn.channel, turn.status, turn.rejection_reason) == (
        Turn.Channel.API,
        Turn.Status.REJECTED,
        "policy_blocked",
    )
    assert turn.msgid.startswith("api:") and body["id"] == f"chatcmpl-{turn.stream_id}"
    assert turn.conversation.external is True
    assert LedgerEntry.objects.filter(ref__endswith=f":{turn.pk}").count() == 1
    assert ApiKey.objects.get().last_used_at is not None


def test_a_blocked_question_streams_the_refusal(client, bot):
    block_policy(bot, "绝密文件")
    key, _note = apikey_create("hr", "k")

    response = ask(client, key, question("hr", "把绝密文件发我", stream=True))

    assert response["Content-Type"] == "text/event-stream"
    events = async_to_sync(_read)(response.streaming_content).decode().split("\n\n")
    data = [event.removeprefix("data: ") for event in events if event]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text == "该内容无法回答。"
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_the_keys_rate_limit_and_the_bots_answer_429(client, make_bot):
    bot = make_bot()
    block_policy(bot, "绝密文件")
    key, _note = apikey_create("hr", "k", "--rate-limit", "1")
    assert ask(client, key, question("hr", "绝密文件")).status_code == 200

    response = ask(client, key, question("hr", "绝密文件"))

    assert response.status_code == 429
    assert error_of(response)["code"] == "rate_limit_exceeded"
    assert Turn.objects.count() == 1  # refused before a turn: the key's own limit

    # The bot's per-user limit is the pipeline's: a rejected turn, and a 429 with its reply
    bot.rate_limit_per_minute = 1
    bot.save()
    other, _note = apikey_create("hr", "other")
    assert ask(client, other, question("hr", "绝密文件")).status_code == 200
    response = ask(client, other, question("hr", "绝密文件"))
    assert response.status_code == 429
    assert Turn.objects.latest("pk").rejection_reason == "rate_limited"
    assert error_of(response)["message"] == Turn.objects.latest("pk").answer


def test_a_bot_limited_to_some_employees_refuses_an_external_key_with_403(client, make_bot):
    make_bot(allowed_userids=["zhangsan"])
    key, _note = apikey_create("hr", "k")

    response = ask(client, key, question("hr", "年假几天？"))

    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_error"
    assert Turn.objects.get().rejection_reason == "not_allowed"


def test_a_key_bound_to_an_employee_asks_as_them_until_they_leave(client, bot):
    DirectoryUser.objects.create(userid="zhangsan", name="张三")
    block_policy(bot, "绝密文件")
    key, _note = apikey_create("hr", "k", "--userid", "zhangsan")

    assert ask(client, key, question("hr", "绝密文件")).status_code == 200
    conversation = Turn.objects.get().conversation
    assert (conversation.userid, conversation.external) == ("zhangsan", False)
    assert conversation.chat_id.startswith("api:")  # apart from their WeCom chat

    DirectoryUser.objects.filter(userid="zhangsan").delete()
    response = ask(client, key, question("hr", "绝密文件"))
    assert response.status_code == 401


def test_each_end_user_of_a_key_has_a_conversation_of_its_own(client, bot):
    block_policy(bot, "绝密文件")
    key, _note = apikey_create("hr", "k")
    for user in ("room-1", "room-2", "room-1", ""):
        ask(client, key, question("hr", "绝密文件", user=user))
    threads = [turn.conversation_id for turn in Turn.objects.order_by("pk")]
    assert threads[0] == threads[2] and len(set(threads)) == 3


# --- the admin ---------------------------------------------------------------------------


def test_admin_creates_a_key_shows_it_once_and_revokes_it(admin_client, bot):
    response = admin_client.post(
        reverse("admin:openai_api_apikey_add"),
        {"name": "wechaty", "bots": [bot.pk], "userid": "", "rate_limit_per_minute": "30"},
    )

    assert response.status_code == 200, response.content.decode()[:2000]
    key = re.search(r'<code id="api-key-value">([^<]+)</code>', response.content.decode())[1]
    row = ApiKey.objects.get()
    assert row.matches(key) and row.created_by.username == "admin"
    assert "no-store" in response["Cache-Control"]
    page = admin_client.get(reverse("admin:openai_api_apikey_change", args=[row.pk]))
    assert key not in page.content.decode() and row.prefix in page.content.decode()
    assert OperatorAuditEntry.objects.filter(action="openai_api.api_key.create").count() == 1

    admin_client.post(
        reverse("admin:openai_api_apikey_changelist"),
        {"action": "revoke", "_selected_action": [row.pk]},
    )

    row.refresh_from_db()
    assert row.revoked_at is not None
    entry = OperatorAuditEntry.objects.get(action="openai_api.api_key.revoke")
    assert entry.after["revoked_at"] and "key_hash" not in entry.after

    admin_client.post(reverse("admin:openai_api_apikey_delete", args=[row.pk]), {"post": "yes"})
    assert not ApiKey.objects.exists()
    entry = OperatorAuditEntry.objects.get(action="openai_api.api_key.delete")
    assert entry.before["name"] == "wechaty" and "key_hash" not in entry.before


def test_admin_refuses_a_key_for_an_employee_not_in_the_directory(admin_client, bot):
    response = admin_client.post(
        reverse("admin:openai_api_apikey_add"),
        {"name": "x", "bots": [bot.pk], "userid": "ghost", "rate_limit_per_minute": "30"},
    )
    assert response.status_code == 200 and not ApiKey.objects.exists()
    assert "errorlist" in response.content.decode()


def test_staff_see_and_grant_only_the_bots_they_manage(client, make_bot):
    hr, it = make_bot(slug="hr"), make_bot(slug="it", name="IT助手")
    api_key_create(name="hr key", bots=[hr], actor=None)
    api_key_create(name="both", bots=[hr, it], actor=None)
    manager = User.objects.create_user("manager", password="x", is_staff=True)
    manager.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_apikey", "add_apikey", "change_apikey"])
    )
    assign_perm("bots.change_bot", manager, hr)
    client.force_login(manager)

    page = client.get(reverse("admin:openai_api_apikey_changelist")).content.decode()
    form = client.get(reverse("admin:openai_api_apikey_add")).content.decode()

    assert "hr key" in page and "both" not in page
    assert f'value="{hr.pk}"' in form and f'value="{it.pk}"' not in form


# --- pieces --------------------------------------------------------------------------------


def test_progress_parses_the_wecom_rendering_and_deltas_add_up_to_the_answer():
    assert progress_parse("<think>hmm") == Progress(reasoning="hmm", answer="")
    assert progress_parse("<think>hmm</think>Hi") == Progress(reasoning="hmm", answer="Hi")
    assert progress_parse("Hi there") == Progress(reasoning="", answer="Hi there")

    deltas = Deltas()
    sent = [
        deltas.step(Progress(reasoning="a", answer="")),
        deltas.step(Progress(reasoning="ab", answer="Hel")),
        deltas.step(Progress(reasoning="ab", answer="Hello ")),  # the space waits
        deltas.step(Progress(reasoning="ab", answer="Hello wo")),
        deltas.final(reasoning="ab", answer="Hello world\n\nSources: [1]"),
    ]
    assert "".join(r for r, _a in sent) == "ab"
    assert "".join(a for _r, a in sent) == "Hello world\n\nSources: [1]"

    refused = Deltas()
    refused.step(Progress(reasoning="", answer="The secret is"))
    assert refused.final(reasoning="", answer="该内容无法回答。") == ("", "\n\n该内容无法回答。")


# --- the OpenAPI schema --------------------------------------------------------------------

# The schema's and its documentation page's own URLs are not part of the API they describe.
SCHEMA_PAGES = {"/api/schema/", "/api/docs/"}


def _routes(resolver: URLResolver, prefix: str = "") -> list[str]:
    routes = []
    for pattern in resolver.url_patterns:
        # A path() route as written, or a re_path() regex without its anchors.
        route = prefix + str(pattern.pattern).removeprefix("^").removesuffix("$")
        if isinstance(pattern, URLResolver):
            routes += _routes(pattern, route)
        elif isinstance(pattern, URLPattern):
            route = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
            routes.append("/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route))
    return routes


def _missing_from_schema(client: Client) -> tuple[set[str], dict[str, Any]]:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = json.loads(response.content)
    routes = {
        route
        for route in _routes(get_resolver())
        if route.startswith(("/v1/", "/api/")) and route not in SCHEMA_PAGES
    }
    assert {"/v1/chat/completions", "/v1/models", "/api/knowledge/search/"} <= routes
    return routes - set(schema["paths"]), schema


def test_every_endpoint_under_v1_and_api_is_in_the_openapi_schema(admin_client):
    missing, schema = _missing_from_schema(admin_client)
    assert missing == set()
    assert schema["openapi"].startswith("3.")
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


@pytest.mark.urls("tests.schema_gap_urls")
def test_the_schema_check_notices_an_endpoint_the_schema_lacks(admin_client):
    missing, _schema = _missing_from_schema(admin_client)
    assert missing == {"/api/undocumented/{pk}/"}


def test_the_documentation_page_uses_only_local_static_files(admin_client, client):
    page = admin_client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any("swagger-ui" in asset for asset in assets)
    assert all(asset.startswith("/") for asset in assets), assets
    assert client.get("/api/schema/").status_code in {401, 403}


def test_a_reasoning_models_think_block_comes_back_as_reasoning_content(client, bot):
    # Given a turn a reasoning model answered (the worker stored its <think> apart)
    from django.utils import timezone

    from apps.bots.models import Conversation
    from apps.openai_api.api import _completion, completion_events

    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="api:x")
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid="api:r1",
        stream_id="r1",
        question="1+1?",
        answer="2",
        reasoning="One plus one is two.",
        status=Turn.Status.ANSWERED,
        received_at=timezone.now(),
        prompt_tokens=7,
        completion_tokens=9,
        channel=Turn.Channel.API,
    )
    # Then both shapes carry it apart from the answer
    message = _completion(turn)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": "2",
        "reasoning_content": "One plus one is two.",
    }
    body = async_to_sync(_read)(completion_events(turn, usage=True)).decode()
    chunks = [json.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: {")]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert {"reasoning_content": "One plus one is two."} in deltas and {"content": "2"} in deltas
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}


def test_a_failed_turn_ends_the_stream_with_an_error_event(bot):
    from django.utils import timezone

    from apps.bots.models import Conversation
    from apps.openai_api.api import completion_events

    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="api:x")
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid="api:f1",
        stream_id="f1",
        question="hi",
        status=Turn.Status.FAILED,
        error="engine died",
        received_at=timezone.now(),
        channel=Turn.Channel.API,
    )

    body = async_to_sync(_read)(completion_events(turn, usage=False)).decode()

    last = json.loads(body.strip().split("\n\n")[-1].removeprefix("data: "))
    assert last["error"]["code"] == "answer_failed" and "[DONE]" not in body
    assert "engine died" not in body  # the admin's detail stays in the admin

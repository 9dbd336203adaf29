"""Remote model profiles: set up in the admin (the API key write-only and encrypted at rest),
tested with the admin's test button, and answering a bot's turns through a real worker
against a real OpenAI-compatible server (`llama_cpp.server` with the bundled model)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from apps.bots.models import Turn
from apps.inference.engine.base import RemoteSpec
from apps.inference.models import ModelProfile
from tests.conftest import turn_terminal
from tests.openai_server import API_KEY, MODEL_ALIAS

ADD = "admin:inference_modelprofile_add"
CHANGE = "admin:inference_modelprofile_change"
TRIAL = "admin:inference_modelprofile_trial_load"


def _form(**overrides):
    data = {
        "name": "gpu-cluster",
        "kind": "remote",
        "gguf_file": "",
        "gguf_path": "",
        "base_url": "http://gpu-1.internal:8000/v1",
        "remote_model": "qwen3-8b",
        "new_api_key": "sk-remote-secret-1",
        "context_size": 8192,
        "n_gpu_layers": 0,
        "batch_size": 512,
        "slots": 8,
        "prefix_cache_size": 0,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
    }
    data.update(overrides)
    return data


def _remote_profile(server, **fields) -> ModelProfile:
    values = {
        "name": "remote smol",
        "kind": ModelProfile.Kind.REMOTE,
        "base_url": server.base_url,
        "remote_model": MODEL_ALIAS,
        "api_key": API_KEY,
        "slots": 2,
        "temperature": 0.0,
    }
    values.update(fields)
    return ModelProfile.objects.create(**values)


@pytest.mark.django_db
def test_a_remote_profile_needs_no_model_file_and_keeps_its_key_encrypted(admin_client):
    response = admin_client.post(reverse(ADD), _form())
    assert response.status_code == 302, response.context["adminform"].form.errors
    profile = ModelProfile.objects.get(name="gpu-cluster")
    assert profile.is_remote and profile.gguf_path == ""
    assert profile.api_key == "sk-remote-secret-1"
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM bots_modelprofile WHERE id = %s", [profile.pk])
        stored = cursor.fetchone()[0]
    assert stored and "sk-remote-secret-1" not in stored
    spec = profile.spec()
    assert spec == RemoteSpec(
        base_url="http://gpu-1.internal:8000/v1",
        model="qwen3-8b",
        api_key="sk-remote-secret-1",
        concurrency=8,
    )
    assert "sk-remote-secret-1" not in repr(spec)
    # Write-only: the change page says a key is set but never shows it.
    page = admin_client.get(reverse(CHANGE, args=[profile.pk]), HTTP_ACCEPT_LANGUAGE="en")
    assert "sk-remote-secret-1" not in page.content.decode()
    assert "API key set" in page.content.decode()
    # Saving without a new key keeps the stored one; the box removes it.
    admin_client.post(reverse(CHANGE, args=[profile.pk]), _form(new_api_key=""))
    profile.refresh_from_db()
    assert profile.api_key == "sk-remote-secret-1"
    admin_client.post(reverse(CHANGE, args=[profile.pk]), _form(new_api_key="", clear_api_key="on"))
    profile.refresh_from_db()
    assert profile.api_key == ""


@pytest.mark.django_db
def test_only_superusers_choose_where_questions_and_the_key_go():
    from django.contrib.auth.models import Permission, User
    from django.test import Client

    user = User.objects.create_user("clerk", password="x-Very-Long-Pass-1", is_staff=True)
    for codename in ("add_modelprofile", "change_modelprofile", "view_modelprofile"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    clerk = Client()
    clerk.force_login(user)
    response = clerk.post(reverse(ADD), _form(), HTTP_ACCEPT_LANGUAGE="en")
    assert (
        "Only superusers may set or change the server URL."
        in (response.context["adminform"].form.errors["base_url"])
    )
    profile = ModelProfile.objects.create(
        name="gpu-cluster", kind="remote", base_url="http://gpu-1.internal:8000/v1",
        remote_model="qwen3-8b",
    )  # fmt: skip
    # The clerk may tune the profile as long as the address stays.
    response = clerk.post(reverse(CHANGE, args=[profile.pk]), _form(slots=2))
    assert response.status_code == 302
    profile.refresh_from_db()
    assert profile.slots == 2
    response = clerk.post(
        reverse(CHANGE, args=[profile.pk]), _form(base_url="http://elsewhere.example/v1")
    )
    assert "base_url" in response.context["adminform"].form.errors
    profile.refresh_from_db()
    assert profile.base_url == "http://gpu-1.internal:8000/v1"


@pytest.mark.django_db
def test_a_remote_profile_needs_the_url_and_the_model_name(admin_client):
    response = admin_client.post(reverse(ADD), _form(base_url="", remote_model=""))
    errors = response.context["adminform"].form.errors
    assert set(errors) == {"base_url", "remote_model"}
    # A local profile still needs its model file.
    response = admin_client.post(reverse(ADD), _form(kind="local"))
    assert "gguf_path" in response.context["adminform"].form.errors


@pytest.mark.slow
@pytest.mark.django_db
def test_the_test_button_asks_the_remote_server(admin_client, openai_server):
    profile = _remote_profile(openai_server)
    report = admin_client.post(reverse(TRIAL, args=[profile.pk])).json()
    assert report["ok"] is True, report
    assert MODEL_ALIAS in report["models"] and report["first_token_seconds"] > 0
    page = admin_client.get(reverse(CHANGE, args=[profile.pk]), HTTP_ACCEPT_LANGUAGE="en")
    assert "Asks the server for its models" in page.content.decode()
    profile.api_key = "wrong"
    profile.save()
    response = admin_client.post(reverse(TRIAL, args=[profile.pk]), HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert response.status_code == 422
    assert "401" in response.json()["text"] and "服务器" in response.json()["text"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_bot_on_a_remote_profile_streams_its_answer(
    make_bot, simulator_for, start_worker, openai_server
):
    bot = make_bot(model_profile=_remote_profile(openai_server))
    start_worker()
    sim = simulator_for(bot)
    result = sim.ask("@HR助手 How many days of annual leave?", userid="u1", timeout=120)
    assert result.finished and result.answer.strip()
    turn = turn_terminal(result.msgid)
    assert turn.status == Turn.Status.ANSWERED
    assert turn.answer == result.answer.strip()
    assert turn.completion_tokens > 0
    assert turn.first_token_at is not None

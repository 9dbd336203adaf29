"""The admin is the product's main UI: bots are configured there, transcripts read there."""

from __future__ import annotations

import json
import time

import pytest
from django.urls import reverse

from apps.bots.models import Bot, Turn
from apps.inference.engine.base import EngineLoad
from apps.inference.model_load import _client, model_load_get, model_load_publish
from wecom.crypto import generate_encoding_aes_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(admin_client):
    return admin_client


def _bot_form(model_profile, **overrides):
    data = {
        "name": "IT助手",
        "slug": "it",
        "enabled": "on",
        "aibotid": "",
        "new_token": "Tok3nTok3n",
        "new_encoding_aes_key": generate_encoding_aes_key(),
        "model_profile": model_profile.pk,
        "system_prompt": "You help with IT.",
        "temperature": "",
        "max_tokens": "256",
        "context_turns": "5",
        "welcome_message": "",
        "allowed_userids": "",
        "allowed_departments": "IT,HR",
        "rate_limit_per_minute": "10",
        "answer_only_from_sources": "on",
        "retrieval_top_k": "4",
        "queue_notice_seconds": "3",
    }
    data.update(overrides)
    return data


def test_create_bot_then_change_page_shows_callback_url_not_secrets(staff, model_profile):
    data = _bot_form(model_profile)
    response = staff.post(reverse("admin:bots_bot_add"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    bot = Bot.objects.get(slug="it")
    assert bot.token == "Tok3nTok3n"
    assert bot.allowed_departments == ["IT", "HR"]
    page = staff.get(reverse("admin:bots_bot_change", args=[bot.pk])).content.decode()
    assert bot.callback_url() in page
    assert "data-copy-target" in page
    assert "Tok3nTok3n" not in page and data["new_encoding_aes_key"] not in page


def test_empty_secret_fields_keep_the_stored_values(staff, bot, model_profile):
    data = _bot_form(model_profile, slug=bot.slug, new_token="", new_encoding_aes_key="")
    response = staff.post(reverse("admin:bots_bot_change", args=[bot.pk]), data)
    assert response.status_code == 302
    refreshed = Bot.objects.get(pk=bot.pk)
    assert (refreshed.token, refreshed.encoding_aes_key) == (bot.token, bot.encoding_aes_key)


@pytest.mark.parametrize("key", ["short", "x" * 42 + "!", "a" * 44])
def test_invalid_encoding_aes_key_is_refused(staff, model_profile, key):
    response = staff.post(
        reverse("admin:bots_bot_add"), _bot_form(model_profile, new_encoding_aes_key=key)
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["new_encoding_aes_key"]
    assert not Bot.objects.filter(slug="it").exists()


def test_model_profile_path_must_be_a_gguf(staff, tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a model")
    for path, fragment in [
        ("relative/model.gguf", "absolute"),
        (str(tmp_path / "missing.gguf"), "No file"),
        (str(not_gguf), "GGUF"),
    ]:
        response = staff.post(
            reverse("admin:inference_modelprofile_add"),
            _model_profile_form(path),
            HTTP_ACCEPT_LANGUAGE="en",
        )
        errors = response.context["adminform"].form.errors["gguf_path"]
        assert any(fragment in error for error in errors), errors


def _model_profile_form(path: str, **overrides):
    data = {
        "name": "m",
        "gguf_path": path,
        "context_size": 4096,
        "n_gpu_layers": 0,
        "batch_size": 512,
        "slots": 4,
        "prefix_cache_size": 2,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
    }
    data.update(overrides)
    return data


def test_model_profile_slots_cannot_exceed_the_batch_size(staff, model_profile):
    # Given a batch of 16 tokens: every running conversation needs one per decode step
    data = _model_profile_form(model_profile.gguf_path, batch_size=16, slots=32)

    response = staff.post(
        reverse("admin:inference_modelprofile_add"), data, HTTP_ACCEPT_LANGUAGE="en"
    )

    errors = response.context["adminform"].form.errors["slots"]
    assert any("batch size (16)" in error for error in errors), errors
    # And with slots inside the batch the same profile saves
    data["slots"] = 16
    response = staff.post(reverse("admin:inference_modelprofile_add"), data)
    assert response.status_code == 302


def test_model_profile_page_shows_the_live_load_workers_publish(staff, model_profile):
    # Given no worker has the model loaded
    url = reverse("admin:inference_modelprofile_change", args=[model_profile.pk])
    page = staff.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "not loaded by any inference worker" in page

    # When two worker processes publish their engines' load
    model_load_publish(
        profile_id=model_profile.pk,
        load=EngineLoad(slots=4, running=4, waiting=3, estimated_wait_seconds=2.5),
    )
    _client().hset(
        f"wecom_ai:model-load:{model_profile.pk}",
        "other-host:42",
        json.dumps({"slots": 4, "running": 1, "waiting": 0, "wait": 0.0, "at": time.time()}),
    )
    # (and a third one that died a minute ago)
    _client().hset(
        f"wecom_ai:model-load:{model_profile.pk}",
        "dead-host:7",
        json.dumps({"slots": 4, "running": 4, "waiting": 9, "wait": 60, "at": time.time() - 60}),
    )

    # Then the admin adds up the live ones
    load = model_load_get(profile_id=model_profile.pk)
    assert (load.slots, load.running, load.waiting, load.workers) == (8, 5, 3, 2)
    assert load.estimated_wait_seconds == 0.0
    page = staff.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "5 of 8 slots busy, 3 waiting" in page
    page = staff.get(url, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "8 个槽位中 5 个忙碌，3 个排队" in page
    _client().delete(f"wecom_ai:model-load:{model_profile.pk}")


def test_turns_are_read_only_and_searchable(staff, bot):
    from django.utils import timezone

    from apps.bots.models import Conversation

    conversation = Conversation.objects.create(bot=bot, chat_type="group", chat_id="g", userid="u")
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid="m",
        stream_id="s",
        question="年假怎么算",
        answer="五天",
        status=Turn.Status.ANSWERED,
        received_at=timezone.now(),
    )
    listing = staff.get(reverse("admin:bots_turn_changelist"), {"q": "年假"})
    assert "年假怎么算" in listing.content.decode()
    filtered = staff.get(reverse("admin:bots_turn_changelist"), {"status__exact": "failed"})
    assert "年假怎么算" not in filtered.content.decode()
    assert staff.get(reverse("admin:bots_turn_add")).status_code == 403
    assert staff.post(reverse("admin:bots_turn_delete", args=[turn.pk])).status_code == 403
    detail = staff.get(reverse("admin:bots_turn_change", args=[turn.pk]))
    assert detail.status_code == 200 and "五天" in detail.content.decode()


@pytest.mark.parametrize(("language", "expected"), [("zh-hans", "机器人"), ("en", "Bots")])
def test_admin_renders_in_both_languages(staff, bot, language, expected):
    response = staff.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE=language)
    assert expected in response.content.decode()
    page = staff.get(reverse("admin:bots_bot_change", args=[bot.pk]), HTTP_ACCEPT_LANGUAGE=language)
    assert page.status_code == 200


def test_admin_changes_to_bots_and_permissions_are_recorded(staff, bot, model_profile):
    from django.contrib.auth.models import Permission, User

    from apps.audit.models import OperatorAuditEntry

    data = _bot_form(
        model_profile, slug=bot.slug, new_token="Rotated123", system_prompt="Be brief."
    )
    response = staff.post(reverse("admin:bots_bot_change", args=[bot.pk]), data)
    assert response.status_code == 302
    entry = OperatorAuditEntry.objects.get(action="bots.bot.update")
    assert entry.before["system_prompt"] == "You are a concise HR assistant."
    assert entry.after["system_prompt"] == "Be brief."
    assert "Rotated123" not in str(entry.before) + str(entry.after)  # secrets never logged
    assert entry.actor_username == "admin"

    officer = User.objects.create_user("officer", password="x-Very-Long-Pass-1")
    permission = Permission.objects.get(codename="view_turn")
    response = staff.post(
        reverse("admin:auth_user_change", args=[officer.pk]),
        {
            "username": "officer",
            "is_active": "on",
            "is_staff": "on",
            "user_permissions": [permission.pk],
            "date_joined_0": "2026-11-01",
            "date_joined_1": "00:00:00",
            "initial-date_joined_0": "2026-11-01",
            "initial-date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = OperatorAuditEntry.objects.get(action="auth.user.update")
    assert entry.after["user_permissions"] == [permission.pk]
    assert "pbkdf2" not in str(entry.before) + str(entry.after)

"""Guided bot setup in the admin: the callback URL before and after save, generated
credentials, console steps per mode, secrets kept across validation errors, https warning."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from apps.bots.models import Bot
from wecom.crypto import generate_encoding_aes_key, validate_encoding_aes_key

pytestmark = pytest.mark.django_db

GENERATE = "admin:bots_bot_generate_credentials"


def _bot_form(model_profile, **overrides):
    data = {
        "name": "IT助手",
        "slug": "it-desk",
        "enabled": "on",
        "connection_mode": "callback",
        "aibotid": "",
        "new_token": "Tok3nTok3n",
        "new_encoding_aes_key": generate_encoding_aes_key(),
        "new_longconn_secret": "",
        "model_profile": model_profile.pk,
        "system_prompt": "You help with IT.",
        "temperature": "",
        "max_tokens": "256",
        "context_turns": "5",
        "welcome_message": "",
        "welcome_questions": "",
        "allowed_userids": "",
        "allowed_departments": "",
        "rate_limit_per_minute": "10",
        "retrieval_top_k": "4",
        "queue_notice_seconds": "3",
    }
    data.update(overrides)
    return data


def _staff(*permissions: str) -> Client:
    user = User.objects.create_user("clerk", password="x-Very-Long-Pass-1", is_staff=True)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


def test_add_page_previews_the_callback_url_and_shows_steps_for_both_modes(admin_client, settings):
    settings.PUBLIC_BASE_URL = "https://bot.example.com"
    page = admin_client.get(
        reverse("admin:bots_bot_add"), HTTP_ACCEPT_LANGUAGE="en"
    ).content.decode()
    assert 'data-url-template="https://bot.example.com/wecom/aibot/__slug__/callback"' in page
    assert 'data-steps-mode="callback"' in page and 'data-steps-mode="long_connection"' in page
    assert page.count('data-required-mode="callback"') == 2
    assert page.count('data-required-mode="long_connection"') == 2  # BotID and Secret
    assert 'data-generate="token"' in page and 'data-generate="encoding_aes_key"' in page
    assert 'data-copied-label="Copied"' in page
    assert "bot-https-warning" not in page


def test_a_plain_http_public_base_url_is_warned_about(admin_client, settings):
    settings.PUBLIC_BASE_URL = "http://10.0.0.5:8000"
    page = admin_client.get(
        reverse("admin:bots_bot_add"), HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert 'id="bot-https-warning"' in page
    assert "PUBLIC_BASE_URL 为 http://10.0.0.5:8000，不是 https:// 地址" in page
    assert "在企业微信管理后台打开" in page and "“智能机器人 ID”" in page


def test_save_lands_on_the_bot_with_its_callback_url_in_the_message(admin_client, model_profile):
    response = admin_client.post(
        reverse("admin:bots_bot_add"), _bot_form(model_profile), HTTP_ACCEPT_LANGUAGE="zh-hans"
    )
    bot = Bot.objects.get(slug="it-desk")
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:bots_bot_change", args=[bot.pk])
    page = admin_client.get(response["Location"], HTTP_ACCEPT_LANGUAGE="zh-hans")
    messages = [str(message) for message in page.context["messages"]]
    assert any(bot.callback_url() in message and "企业微信" in message for message in messages)


def test_save_and_add_another_still_opens_a_new_form(admin_client, model_profile):
    data = _bot_form(model_profile, _addanother="1")
    response = admin_client.post(reverse("admin:bots_bot_add"), data)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:bots_bot_add")


def test_a_long_connection_bot_is_told_to_watch_its_connection_state(admin_client, model_profile):
    data = _bot_form(
        model_profile,
        connection_mode="long_connection",
        aibotid="bot-1",
        new_token="",
        new_encoding_aes_key="",
        new_longconn_secret="s3cret-value",
    )
    response = admin_client.post(
        reverse("admin:bots_bot_add"), data, follow=True, HTTP_ACCEPT_LANGUAGE="en"
    )
    bot = Bot.objects.get(slug="it-desk")
    assert response.redirect_chain[-1][0] == reverse("admin:bots_bot_change", args=[bot.pk])
    messages = [str(message) for message in response.context["messages"]]
    assert any("connection state" in message for message in messages)
    assert "s3cret-value" not in response.content.decode()


def test_secrets_survive_a_validation_error_from_what_was_typed(admin_client, model_profile):
    data = _bot_form(model_profile, max_tokens="not a number")
    response = admin_client.post(reverse("admin:bots_bot_add"), data)
    assert response.status_code == 200
    page = response.content.decode()
    assert f'value="{data["new_token"]}"' in page
    assert f'value="{data["new_encoding_aes_key"]}"' in page
    assert not Bot.objects.filter(slug="it-desk").exists()


def test_stored_secrets_are_never_filled_in(admin_client, bot, model_profile):
    page = admin_client.get(reverse("admin:bots_bot_change", args=[bot.pk])).content.decode()
    assert bot.token not in page and bot.encoding_aes_key not in page
    data = _bot_form(
        model_profile, slug=bot.slug, new_token="", new_encoding_aes_key="", max_tokens="x"
    )
    response = admin_client.post(reverse("admin:bots_bot_change", args=[bot.pk]), data)
    assert response.status_code == 200
    assert bot.token not in response.content.decode()
    assert bot.encoding_aes_key not in response.content.decode()


def test_generated_credentials_are_valid_and_fresh(admin_client):
    first = admin_client.post(reverse(GENERATE)).json()
    second = admin_client.post(reverse(GENERATE)).json()
    assert first["token"].isalnum() and len(first["token"]) == 32
    validate_encoding_aes_key(first["encoding_aes_key"])
    assert first["encoding_aes_key"].isalnum()
    assert first != second


def test_generating_credentials_needs_a_post(admin_client):
    assert admin_client.get(reverse(GENERATE)).status_code == 405


def test_generating_credentials_is_for_staff_who_may_add_or_change_bots(client):
    anonymous = client.post(reverse(GENERATE))
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    assert _staff().post(reverse(GENERATE)).status_code == 403
    User.objects.filter(username="clerk").delete()
    assert _staff("add_bot").post(reverse(GENERATE)).status_code == 200


def test_generating_credentials_checks_the_csrf_token(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(reverse(GENERATE)).status_code == 403

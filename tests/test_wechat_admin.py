"""Admin of the WeChat doors: secrets are written, never shown; the mode needs its key."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.wechat.models import MiniProgram, OfficialAccount
from wecom.crypto import generate_encoding_aes_key


def _account_form(bot, **fields):
    data = {
        "name": "HR服务号",
        "slug": "hr-mp",
        "enabled": "on",
        "app_id": "wx0123456789abcdef",
        "new_app_secret": "AppS3cretAppS3cret",
        "new_token": "Tok3nTok3n",
        "new_encoding_aes_key": generate_encoding_aes_key(),
        "mode": OfficialAccount.Mode.SAFE,
        "bot": bot.pk,
        "welcome_text": "欢迎",
    }
    data.update(fields)
    return data


def test_create_account_stores_secrets_and_never_shows_them(admin_client, bot):
    data = _account_form(bot)
    response = admin_client.post(reverse("admin:wechat_officialaccount_add"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    account = OfficialAccount.objects.get()
    assert (account.app_secret, account.token) == ("AppS3cretAppS3cret", "Tok3nTok3n")
    assert account.encoding_aes_key == data["new_encoding_aes_key"]
    page = admin_client.get(
        reverse("admin:wechat_officialaccount_change", args=[account.pk])
    ).content.decode()
    assert account.callback_path() in page
    for secret in ("AppS3cretAppS3cret", "Tok3nTok3n", data["new_encoding_aes_key"]):
        assert secret not in page


def test_empty_secret_fields_keep_the_stored_values(admin_client, bot):
    admin_client.post(reverse("admin:wechat_officialaccount_add"), _account_form(bot))
    account = OfficialAccount.objects.get()
    data = _account_form(bot, new_app_secret="", new_token="", new_encoding_aes_key="")
    response = admin_client.post(
        reverse("admin:wechat_officialaccount_change", args=[account.pk]), data
    )
    assert response.status_code == 302
    refreshed = OfficialAccount.objects.get()
    assert (refreshed.app_secret, refreshed.token, refreshed.encoding_aes_key) == (
        account.app_secret,
        account.token,
        account.encoding_aes_key,
    )


@pytest.mark.parametrize("key", ["", "short"])
def test_safe_mode_needs_a_valid_encoding_aes_key(admin_client, bot, key):
    response = admin_client.post(
        reverse("admin:wechat_officialaccount_add"), _account_form(bot, new_encoding_aes_key=key)
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["new_encoding_aes_key"]
    assert not OfficialAccount.objects.exists()


def test_plaintext_mode_needs_no_key(admin_client, bot):
    data = _account_form(bot, new_encoding_aes_key="", mode=OfficialAccount.Mode.PLAINTEXT)
    assert admin_client.post(reverse("admin:wechat_officialaccount_add"), data).status_code == 302


def test_mini_program_secret_is_write_only(admin_client, bot):
    data = {
        "name": "HR小程序",
        "enabled": "on",
        "app_id": "wxMini1",
        "new_app_secret": "MiniS3cret",
        "bots": [bot.pk],
        "rate_limit_per_minute": 5,
    }
    response = admin_client.post(reverse("admin:wechat_miniprogram_add"), data)
    assert response.status_code == 302, response.content.decode()[:2000]
    program = MiniProgram.objects.get()
    assert program.app_secret == "MiniS3cret"
    page = admin_client.get(
        reverse("admin:wechat_miniprogram_change", args=[program.pk])
    ).content.decode()
    assert "MiniS3cret" not in page

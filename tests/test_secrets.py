"""Bot credentials are encrypted at rest with rotatable keys."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from apps.bots.models import Bot
from apps.core import fields

pytestmark = pytest.mark.django_db


def _raw(bot: Bot) -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT token, encoding_aes_key FROM bots_bot WHERE id = %s", [bot.pk])
        return cursor.fetchone()


def test_secrets_are_ciphertext_in_the_database(bot):
    token, key = _raw(bot)
    assert bot.token not in token and bot.encoding_aes_key not in key
    assert Bot.objects.get(pk=bot.pk).token == bot.token


def test_old_ciphertexts_decrypt_after_a_new_key_is_added(bot, settings):
    old_token, _ = _raw(bot)
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, *settings.FIELD_ENCRYPTION_KEYS]
    assert Bot.objects.get(pk=bot.pk).token == bot.token
    call_command("secrets_rotate", stdout=open("/dev/null", "w"))  # noqa: SIM115
    rotated_token, _ = _raw(bot)
    assert rotated_token != old_token
    # After rotation the new key alone suffices.
    settings.FIELD_ENCRYPTION_KEYS = [new_key]
    assert Bot.objects.get(pk=bot.pk).token == bot.token


def test_unknown_key_is_reported_and_never_overwrites_the_secret(bot, settings, caplog):
    stored = _raw(bot)
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    loaded = Bot.objects.get(pk=bot.pk)
    assert fields.is_undecryptable(loaded.token) and loaded.token == ""
    assert "FIELD_ENCRYPTION_KEYS" in caplog.text
    loaded.name = "renamed"
    loaded.save()  # saving the row keeps the ciphertext as it was
    assert _raw(bot) == stored
    with pytest.raises(fields.SecretDecryptError, match="FIELD_ENCRYPTION_KEYS"):
        fields.secret_decrypt(stored[0])


@pytest.mark.django_db(transaction=True)
def test_callback_with_undecryptable_credentials_is_503_not_500(bot, live_server, settings):
    import httpx

    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    response = httpx.get(
        live_server.url + bot.callback_path(),
        params={"msg_signature": "x", "timestamp": "1", "nonce": "2", "echostr": "e"},
        trust_env=False,
    )
    assert (response.status_code, response.text) == (503, "bot misconfigured")


def test_encrypted_field_lives_in_the_kernel_and_old_migrations_still_resolve():
    # Given the landed migrations, which name the field as `apps.bots.fields.…`
    from apps.bots import fields as migration_path

    # Then that path resolves to the kernel's class, and new migrations name the kernel
    assert migration_path.EncryptedTextField is fields.EncryptedTextField
    path, _args, _kwargs = fields.EncryptedTextField().deconstruct()[1:]
    assert path == "apps.core.fields.EncryptedTextField"

"""Bot and model-profile configuration: every save writes its operator audit entry.

The admin, `demo_setup` and `secrets_rotate` call these with their actor (a user, or a
`SystemActor` for a command), so a change is audited whichever door it came through.
Credentials appear in the entry as "(set)" and a keyed fingerprint, never as their value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils.translation import gettext as _

from apps.audit.services.operator_audit import (
    model_delete_audited,
    operator_audit_record,
    operator_audited,
)
from apps.bots.models import Bot
from apps.core.fields import EncryptedTextField, secret_rotate
from apps.inference.models import ModelProfile

BOT_ACTION = "bots.bot"
MODEL_PROFILE_ACTION = "bots.model_profile"


def bot_save(
    *,
    bot: Bot,
    actor: Any,
    related: Callable[[], None] | None = None,
    request_id: str = "",
) -> Bot:
    """Save a bot (credentials, answering, knowledge and access lists) with its entry.

    `related` saves what needs the row first (the admin form's knowledge bases), inside the
    same transaction, so the entry shows them too.
    """
    bot_connection_validate(bot=bot)
    with operator_audited(actor=actor, action_prefix=BOT_ACTION, obj=bot, request_id=request_id):
        bot.save()
        if related is not None:
            related()
    return bot


def bot_connection_validate(*, bot: Bot) -> None:
    """A bot answers through one door, and that door needs its credentials.

    The mode is one field, so enabling the long connection is what switches the callback
    URL off (the view refuses it) and vice versa; the other mode's credentials are kept.
    """
    errors: dict[str, str] = {}
    if bot.uses_long_connection:
        if not bot.aibotid:
            errors["aibotid"] = _("The long connection needs the bot's BotID.")
        if not bot.longconn_secret:
            errors["longconn_secret"] = _("The long connection needs the bot's Secret.")
    else:
        if not bot.token:
            errors["token"] = _("The callback mode needs the bot's Token.")
        if not bot.encoding_aes_key:
            errors["encoding_aes_key"] = _("The callback mode needs the bot's EncodingAESKey.")
    if errors:
        raise ValidationError(errors)


def bot_credentials_set(
    *,
    bot: Bot,
    actor: Any,
    token: str | None = None,
    encoding_aes_key: str | None = None,
    longconn_secret: str | None = None,
    request_id: str = "",
) -> list[str]:
    """Replace the bot's Token, EncodingAESKey and/or long-connection Secret; the names that
    changed (none: no save)."""
    changed = []
    if longconn_secret and longconn_secret != bot.longconn_secret:
        bot.longconn_secret = longconn_secret
        changed.append("longconn_secret")
    if token and token != bot.token:
        bot.token = token
        changed.append("token")
    if encoding_aes_key and encoding_aes_key != bot.encoding_aes_key:
        bot.encoding_aes_key = encoding_aes_key
        changed.append("encoding_aes_key")
    if changed:
        bot_save(bot=bot, actor=actor, request_id=request_id)
    return changed


def bot_delete(*, bot: Bot, actor: Any, request_id: str = "") -> None:
    model_delete_audited(obj=bot, actor=actor, action_prefix=BOT_ACTION, request_id=request_id)


def model_profile_save(
    *,
    profile: ModelProfile,
    actor: Any,
    related: Callable[[], None] | None = None,
    request_id: str = "",
) -> ModelProfile:
    """Save a model profile with its entry (inference workers pick it up by `updated_at`)."""
    with operator_audited(
        actor=actor, action_prefix=MODEL_PROFILE_ACTION, obj=profile, request_id=request_id
    ):
        profile.save()
        if related is not None:
            related()
    return profile


def model_profile_delete(*, profile: ModelProfile, actor: Any, request_id: str = "") -> None:
    model_delete_audited(
        obj=profile, actor=actor, action_prefix=MODEL_PROFILE_ACTION, request_id=request_id
    )


def secrets_rotate(*, actor: Any, request_id: str = "") -> int:
    """Re-encrypt every stored secret with the newest key in FIELD_ENCRYPTION_KEYS.

    The values do not change, only their ciphertext, so the one entry records how many rows
    of each model were re-encrypted.
    """
    total = 0
    rows_per_model: dict[str, int] = {}
    with transaction.atomic():
        for model in apps.get_models():
            fields = [f for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField)]
            if not fields:
                continue
            table = connection.ops.quote_name(model._meta.db_table)
            pk = connection.ops.quote_name(model._meta.pk.column)
            columns = [connection.ops.quote_name(f.column) for f in fields]
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {pk}, {', '.join(columns)} FROM {table} FOR UPDATE")  # noqa: S608
                rows = cursor.fetchall()
                for row in rows:
                    values = [secret_rotate(v) if v else v for v in row[1:]]
                    assignments = ", ".join(f"{c} = %s" for c in columns)
                    cursor.execute(
                        f"UPDATE {table} SET {assignments} WHERE {pk} = %s",  # noqa: S608
                        [*values, row[0]],
                    )
            rows_per_model[model._meta.label_lower] = len(rows)
            total += len(rows)
        operator_audit_record(
            actor=actor,
            action="core.secrets.rotate",
            object_repr="FIELD_ENCRYPTION_KEYS",
            after={"rows": rows_per_model, "total": total},
            request_id=request_id,
        )
    return total

"""Secrets encrypted at rest with rotatable keys (Fernet via `cryptography.MultiFernet`).

The newest key in `settings.FIELD_ENCRYPTION_KEYS` encrypts; every listed key decrypts, so
adding a key never strands old ciphertexts. `secrets_rotate` re-encrypts with the newest.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

logger = logging.getLogger(__name__)


class SecretDecryptError(Exception):
    """A stored secret cannot be decrypted with any configured key."""


@cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty")
    return MultiFernet([Fernet(key) for key in keys])


def fernet() -> MultiFernet:
    return _fernet(tuple(settings.FIELD_ENCRYPTION_KEYS))


def secret_encrypt(plaintext: str) -> str:
    return fernet().encrypt(plaintext.encode()).decode()


def secret_decrypt(ciphertext: str) -> str:
    try:
        return fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise SecretDecryptError(
            "stored secret cannot be decrypted with FIELD_ENCRYPTION_KEYS"
        ) from exc


def secret_rotate(ciphertext: str) -> str:
    return fernet().rotate(ciphertext.encode()).decode()


class UndecryptableSecret(str):
    """A stored secret no configured key opens: it reads as empty and saves back unchanged.

    Loading a row must not crash the admin or the callback when a key was removed by
    mistake; callers check `is_undecryptable` and report the misconfiguration instead.
    """

    ciphertext: str

    def __new__(cls, ciphertext: str) -> UndecryptableSecret:
        instance = super().__new__(cls, "")
        instance.ciphertext = ciphertext
        return instance


def is_undecryptable(value: object) -> bool:
    return isinstance(value, UndecryptableSecret)


if TYPE_CHECKING:  # django-stubs' fields are generic; Django's own are not subscriptable
    _TextField = models.TextField[str | None, str | None]
else:
    _TextField = models.TextField


class EncryptedTextField(_TextField):
    """Plaintext in Python, Fernet ciphertext in the database; never filterable."""

    def from_db_value(self, value: str | None, expression: Any, connection: Any) -> str | None:
        if value is None or value == "":
            return value
        try:
            return secret_decrypt(value)
        except SecretDecryptError:
            logger.error("a %s cannot be decrypted with FIELD_ENCRYPTION_KEYS", self.name)
            return UndecryptableSecret(value)

    def get_prep_value(self, value: Any) -> str | None:
        if isinstance(value, UndecryptableSecret):
            return value.ciphertext
        prepared: str | None = super().get_prep_value(value)
        if prepared is None or prepared == "":
            return prepared
        return secret_encrypt(prepared)

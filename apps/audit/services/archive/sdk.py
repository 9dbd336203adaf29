"""Opening a source: the vendor library from deployment settings, the source's secret and
keys, and the advisory lock that keeps one puller per source."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils.translation import gettext as _

from apps.audit.models import ArchiveSource
from apps.core.fields import is_undecryptable
from apps.core.language import deployment_language
from wecom.archive.sdk import (
    BINDING_ERROR,
    ArchiveSdkError,
    FinanceSdk,
    SdkLibraryConfig,
    sdk_library_load,
)

# Session-level advisory lock namespace (two-int form: this, source id): one puller per source.
_PULL_LOCK_NAMESPACE = 0x0A7C_1E00


@dataclass(slots=True)
class ArchivePullResult:
    source_id: int
    batches: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    media_stored: int = 0
    media_pending: int = 0
    cases: int = 0
    cursor: int = 0
    error: str = ""
    error_code: int | None = None
    retryable: bool = False
    skipped: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


@contextlib.contextmanager
def pull_lock(source_id: int) -> Iterator[bool]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_PULL_LOCK_NAMESPACE, source_id])
        acquired = bool(cursor.fetchone()[0])
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_unlock(%s, %s)", [_PULL_LOCK_NAMESPACE, source_id]
                )


def private_keys(source: ArchiveSource, result: ArchivePullResult) -> dict[int, str]:
    keys = {}
    for key in source.keys.all():
        if is_undecryptable(key.private_key):
            with deployment_language():
                warning = _(
                    "the private key of publickey_ver=%(version)s cannot be decrypted "
                    "with FIELD_ENCRYPTION_KEYS"
                ) % {"version": key.publickey_ver}
            result.warnings.append(warning)
            continue
        keys[key.publickey_ver] = key.private_key
    return keys


def sdk_library_config() -> SdkLibraryConfig:
    """The vendor library is deployment configuration: a form must never choose what the
    workers load (its constructors run as the worker, before any check)."""
    return SdkLibraryConfig(
        path=settings.ARCHIVE_SDK_LIBRARY,
        allowed_dirs=tuple(settings.ARCHIVE_SDK_ALLOWED_DIRS),
        sha256=settings.ARCHIVE_SDK_SHA256,
        trusted_uids=frozenset(settings.ARCHIVE_SDK_TRUSTED_UIDS),
    )


def sdk_open(source: ArchiveSource) -> FinanceSdk:
    if is_undecryptable(source.secret):
        raise ArchiveSdkError(
            BINDING_ERROR, "the archive secret cannot be decrypted with FIELD_ENCRYPTION_KEYS"
        )
    library = sdk_library_load(sdk_library_config())
    return FinanceSdk(library, corp_id=source.corp_id, secret=source.secret)


def sdk_options(source: ArchiveSource) -> dict[str, Any]:
    return {
        "proxy": source.proxy,
        "passwd": source.proxy_password or "",
        "timeout": source.timeout_seconds,
    }


def archive_key_fingerprint(pem: str) -> str:
    """SHA-256 of the public half (DER), shown in the admin instead of the private key."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem.encode(), password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(public).hexdigest()

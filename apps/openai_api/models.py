"""API keys for the OpenAI-compatible endpoints: stored hashed, scoped to bots, revocable."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

# Keys look like `sk-wai-<prefix>.<secret>`: the prefix finds the row (and is shown in the
# admin so people can tell their keys apart), the whole key is compared by its hash.
KEY_MARKER = "sk-wai-"
PREFIX_LENGTH = 10


def key_hash(raw_key: str) -> str:
    """SHA-256 is enough for keys of 256 random bits: there is nothing to brute-force."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """One client's key: which bots it may ask, as whom, and how often."""

    name = models.CharField(_("name"), max_length=100)
    prefix = models.CharField(_("key prefix"), max_length=32, unique=True, editable=False)
    key_hash = models.CharField(_("key hash"), max_length=64, editable=False)
    bots = models.ManyToManyField(
        "bots.Bot",
        related_name="api_keys",
        verbose_name=_("bots"),
        help_text=_("The bots this key may use (its /v1/models list)."),
    )
    userid = models.CharField(
        _("acts as employee"),
        max_length=64,
        blank=True,
        help_text=_(
            "A WeCom userid from the directory: answers then use that employee's knowledge "
            "audience and allow-lists. Empty: the key acts as an external user and reads "
            "only knowledge bases open to external users."
        ),
    )
    rate_limit_per_minute = models.PositiveIntegerField(
        _("questions per minute"),
        default=60,
        help_text=_("Requests this key may make per minute (0 = unlimited)."),
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("created by"),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({KEY_MARKER}{self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def clean(self) -> None:
        from apps.directory.models import DirectoryUser

        if self.userid and not DirectoryUser.objects.filter(userid=self.userid).exists():
            raise ValidationError({"userid": _("No employee with this userid in the directory.")})

    def matches(self, raw_key: str) -> bool:
        return hmac.compare_digest(self.key_hash, key_hash(raw_key))

    def revoke(self, *, now: datetime) -> bool:
        """Revoked once: a second revoke keeps the first time and says it lost."""
        updated = ApiKey.objects.filter(pk=self.pk, revoked_at__isnull=True).update(revoked_at=now)
        if updated:
            self.revoked_at = now
        return bool(updated)

    def used(self, *, now: datetime) -> None:
        """Last use, written at most once a minute per key (a busy key is not a hot row)."""
        stale = now.replace(second=0, microsecond=0)
        ApiKey.objects.filter(pk=self.pk).filter(
            models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lt=stale)
        ).update(last_used_at=now)
        self.last_used_at = now

"""The hash-chained ledger: append-only in the database itself (triggers, migration 0002)."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class LedgerEntry(models.Model):
    """One link of the SHA-256 hash chain; the database refuses UPDATE, DELETE and TRUNCATE.

    Payloads hold ids, metadata and content fingerprints, never the content, so purging
    expired text leaves every hash verifiable.
    """

    class Kind(models.TextChoices):
        TURN = "turn", _("bot turn")
        ARCHIVE_MESSAGE = "archive_message", _("archived message")
        PURGE = "purge", _("retention purge")
        REVIEW_DECISION = "review_decision", _("review decision")

    seq = models.PositiveBigIntegerField(_("sequence"), unique=True)
    kind = models.CharField(_("kind"), max_length=30, choices=Kind.choices)
    ref = models.CharField(_("object"), max_length=200, help_text=_("app.model:id"))
    payload = models.JSONField(_("payload"))
    payload_hash = models.CharField(_("payload hash"), max_length=64)
    prev_hash = models.CharField(_("previous hash"), max_length=64, unique=True)
    entry_hash = models.CharField(_("entry hash"), max_length=64, unique=True)
    # HMAC of entry_hash under AUDIT_LEDGER_KEY, a secret kept outside the database: whoever
    # rewrites the chain with full database access cannot compute it again.
    entry_mac = models.CharField(_("anchor MAC"), max_length=64, default="", blank=True)
    created_at = models.DateTimeField(_("created"))

    class Meta:
        verbose_name = _("ledger entry")
        verbose_name_plural = _("ledger entries")
        ordering = ["-seq"]
        indexes = [models.Index(fields=["ref"], name="ledger_ref")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} {self.ref}"


class LedgerCheckpoint(models.Model):
    """The chain head recorded once a day; a rewritten chain no longer matches it."""

    day = models.DateField(_("day"), unique=True)
    seq = models.PositiveBigIntegerField(_("head sequence"))
    head_hash = models.CharField(_("head hash"), max_length=64)
    mac = models.CharField(_("anchor MAC"), max_length=64, default="", blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("ledger checkpoint")
        verbose_name_plural = _("ledger checkpoints")
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.day} #{self.seq} {self.head_hash[:12]}"

"""Session archive (会话内容存档): sources, their keys, archived messages, quarantine."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from apps.audit.models.policy import Action
from apps.core.fields import EncryptedTextField


class ArchiveSource(models.Model):
    """One corporation's session archive (会话内容存档) and the durable pull cursor."""

    class Health(models.TextChoices):
        NEVER = "never", _("never pulled")
        OK = "ok", _("ok")
        WARNING = "warning", _("warning")
        ERROR = "error", _("error")

    name = models.CharField(_("name"), max_length=100, unique=True)
    corp_id = models.CharField(_("corp ID"), max_length=64)
    secret = EncryptedTextField(
        _("archive secret"), help_text=_("The Secret of the session archive app in WeCom.")
    )
    proxy = models.CharField(
        _("proxy"), max_length=200, blank=True, help_text=_("e.g. socks5://10.0.0.1:1080")
    )
    proxy_password = EncryptedTextField(_("proxy password"), blank=True)
    timeout_seconds = models.PositiveSmallIntegerField(
        _("timeout (s)"), default=30, validators=[MinValueValidator(1), MaxValueValidator(300)]
    )
    batch_size = models.PositiveSmallIntegerField(
        _("batch size"),
        default=1000,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text=_("Records per GetChatData call (at most 1000)."),
    )
    pull_interval_minutes = models.PositiveSmallIntegerField(
        _("pull every (minutes)"),
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(1440)],
        help_text=_("WeCom keeps records for 5 days only; pull well within that."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    cursor = models.PositiveBigIntegerField(
        _("seq cursor"),
        default=0,
        help_text=_("Highest seq stored or quarantined; the next pull starts after it."),
    )
    health = models.CharField(
        _("health"), max_length=10, choices=Health.choices, default=Health.NEVER
    )
    status_message = models.TextField(_("last pull status"), blank=True)
    last_pull_at = models.DateTimeField(_("last pull"), null=True, blank=True)
    last_success_at = models.DateTimeField(_("last successful pull"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("archive source")
        verbose_name_plural = _("archive sources")
        ordering = ["name"]
        permissions = [
            ("review_archivesource", _("Can review cases and messages of this archive source"))
        ]

    def __str__(self) -> str:
        return self.name


class ArchiveKey(models.Model):
    """The RSA private key of one `publickey_ver`; old versions stay for old records."""

    source = models.ForeignKey(ArchiveSource, on_delete=models.CASCADE, related_name="keys")
    publickey_ver = models.PositiveIntegerField(_("public key version"))
    private_key = EncryptedTextField(_("private key (PEM)"))
    fingerprint = models.CharField(
        _("public key SHA-256"), max_length=64, editable=False, blank=True
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("archive key")
        verbose_name_plural = _("archive keys")
        ordering = ["source", "-publickey_ver"]
        constraints = [
            models.UniqueConstraint(fields=["source", "publickey_ver"], name="archive_key_version")
        ]

    def __str__(self) -> str:
        return f"{self.source} v{self.publickey_ver}"


class ArchivedMessage(models.Model):
    """A decrypted archive record, stored once per msgid."""

    class MediaStatus(models.TextChoices):
        NONE = "", _("no media")
        PENDING = "pending", _("pending")
        STORED = "stored", _("stored")
        FAILED = "failed", _("failed")

    source = models.ForeignKey(
        ArchiveSource,
        on_delete=models.PROTECT,
        related_name="messages",
        verbose_name=_("archive source"),
    )
    msgid = models.CharField(_("message id"), max_length=128, unique=True)
    seq = models.PositiveBigIntegerField(_("seq"))
    publickey_ver = models.PositiveIntegerField(_("public key version"))
    action = models.CharField(_("action"), max_length=10)
    sender = models.CharField(_("from"), max_length=128, blank=True)
    tolist = ArrayField(
        models.CharField(max_length=128), verbose_name=_("to"), default=list, blank=True
    )
    roomid = models.CharField(_("group chat id"), max_length=128, blank=True)
    msgtime = models.DateTimeField(_("sent"))
    msgtype = models.CharField(_("message type"), max_length=30)
    text = models.TextField(_("text"), blank=True)
    external = models.BooleanField(_("external"), default=False)
    revoked_msgid = models.CharField(_("recalls message"), max_length=128, blank=True)
    recalled_at = models.DateTimeField(_("recalled"), null=True, blank=True)
    sdkfileid = models.TextField(_("SDK file id"), blank=True)
    media_status = models.CharField(
        _("media"), max_length=10, choices=MediaStatus.choices, default=MediaStatus.NONE, blank=True
    )
    media_path = models.CharField(
        _("media file"), max_length=300, blank=True, help_text=_("Relative to MEDIA_ROOT.")
    )
    media_sha256 = models.CharField(_("media SHA-256"), max_length=64, blank=True)
    media_size = models.PositiveBigIntegerField(_("media bytes"), null=True, blank=True)
    media_error = models.TextField(_("media error"), blank=True)
    policy_action = models.CharField(
        _("policy result"), max_length=10, choices=Action.choices, blank=True
    )
    raw = models.JSONField(_("decrypted record"), default=dict, blank=True)
    llm_review = models.JSONField(
        _("LLM review"),
        default=dict,
        blank=True,
        help_text=_("Per policy id: the model's risk, label and reason for this conversation."),
    )
    llm_review_error = models.TextField(_("LLM review error"), blank=True)
    llm_reviewed_at = models.DateTimeField(_("LLM reviewed"), null=True, blank=True)
    stored_at = models.DateTimeField(_("stored"), auto_now_add=True)
    purged_at = models.DateTimeField(_("content purged"), null=True, blank=True)

    class Meta:
        verbose_name = _("archived message")
        verbose_name_plural = _("archived messages")
        ordering = ["-msgtime"]
        indexes = [
            models.Index(fields=["source", "seq"], name="archived_source_seq"),
            models.Index(fields=["source", "msgtime"], name="archived_source_time"),
            models.Index(fields=["roomid", "msgtime"], name="archived_room_time"),
            models.Index(fields=["sender", "msgtime"], name="archived_sender_time"),
        ]
        permissions = [("export_archivedmessage", _("Can export archived messages"))]

    def __str__(self) -> str:
        return self.msgid


class ArchiveQuarantine(models.Model):
    """A record that could not be stored, kept with its error so the pull can move on."""

    source = models.ForeignKey(ArchiveSource, on_delete=models.CASCADE, related_name="quarantined")
    seq = models.PositiveBigIntegerField(_("seq"), null=True, blank=True)
    msgid = models.CharField(_("message id"), max_length=128, blank=True)
    error = models.TextField(_("error"))
    error_code = models.IntegerField(_("SDK error code"), null=True, blank=True)
    record = models.JSONField(_("record as pulled"), default=dict, blank=True)
    created_at = models.DateTimeField(_("quarantined"), auto_now_add=True)

    class Meta:
        verbose_name = _("quarantined record")
        verbose_name_plural = _("quarantined records")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["source", "seq"],
                condition=Q(seq__isnull=False),
                name="quarantine_source_seq_once",
            )
        ]

    def __str__(self) -> str:
        return f"{self.source} seq {self.seq}: {self.error[:60]}"

"""A WeCom self-built app (自建应用) that a bot answers, and where each app turn's answer goes."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from apps.bots.models import Bot, Turn
from apps.core.fields import EncryptedTextField
from wecom.app import MARKDOWN_MAX_BYTES, TEXT_MAX_BYTES


class WeComApp(models.Model):
    """One app of one corp: WeCom calls its callback URL, the answers go out by message/send."""

    class MessageFormat(models.TextChoices):
        TEXT = "text", _("text")
        MARKDOWN = "markdown", _("markdown")

    name = models.CharField(_("name"), max_length=100)
    slug = models.SlugField(
        _("slug"), max_length=50, unique=True, help_text=_("Part of the callback URL.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    bot = models.ForeignKey(
        Bot,
        on_delete=models.PROTECT,
        related_name="wecom_apps",
        verbose_name=_("bot"),
        help_text=_("The bot that answers the app's messages."),
    )
    corp_id = models.CharField(
        _("corp id"), max_length=64, help_text=_("The CorpID (企业ID) from My Company in WeCom.")
    )
    agent_id = models.PositiveIntegerField(
        _("agent id"), help_text=_("The app's AgentId from its page in WeCom's admin.")
    )
    secret = EncryptedTextField(_("secret"), blank=True)
    token = EncryptedTextField(_("token"), blank=True)
    encoding_aes_key = EncryptedTextField(_("EncodingAESKey"), blank=True)
    message_format = models.CharField(
        _("message format"),
        max_length=10,
        choices=MessageFormat.choices,
        default=MessageFormat.TEXT,
        help_text=_(
            "Text reaches WeChat users too and holds 2,048 bytes per message; markdown "
            "(WeCom only) holds 4,096. Longer answers are sent as numbered parts."
        ),
    )
    thinking_notice_seconds = models.PositiveSmallIntegerField(
        _("thinking notice after (seconds)"),
        default=10,
        validators=[MaxValueValidator(300)],
        help_text=_(
            "The app cannot show an answer as it is written: when the model has not started "
            "answering after this long, the member gets a short “thinking…” message. "
            "0 = never."
        ),
    )
    test_userid = models.CharField(
        _("test recipient"),
        max_length=64,
        blank=True,
        help_text=_("The userid that the admin's “send test message” action writes to."),
    )
    url_verified_at = models.DateTimeField(_("callback URL verified"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("WeCom self-built app")
        verbose_name_plural = _("WeCom self-built apps")
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def callback_path(self) -> str:
        return reverse("wecomapp:callback", kwargs={"slug": self.slug})

    def callback_url(self) -> str:
        return settings.PUBLIC_BASE_URL + self.callback_path()

    @property
    def markdown(self) -> bool:
        return self.message_format == self.MessageFormat.MARKDOWN

    @property
    def message_max_bytes(self) -> int:
        return MARKDOWN_MAX_BYTES if self.markdown else TEXT_MAX_BYTES

    def url_verified_record(self) -> None:
        from django.utils import timezone

        WeComApp.objects.filter(pk=self.pk).update(url_verified_at=timezone.now())


class AppDelivery(models.Model):
    """Which app a turn came through, who gets its answer, and how many parts went out.

    The part count survives a worker crash or a rate-limited retry, so a long answer is
    continued where it stopped instead of being sent again from its first part.
    """

    turn = models.OneToOneField(
        Turn,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="wecom_app_delivery",
        verbose_name=_("turn"),
    )
    app = models.ForeignKey(
        WeComApp, on_delete=models.CASCADE, related_name="deliveries", verbose_name=_("app")
    )
    touser = models.CharField(
        _("recipient"),
        max_length=128,
        help_text=_("A member's userid, or a customer's external_userid."),
    )
    open_kfid = models.CharField(
        _("customer service account"),
        max_length=64,
        blank=True,
        help_text=_("微信客服: the account (open_kfid) the customer wrote to; empty for the app."),
    )
    parts_sent = models.PositiveSmallIntegerField(_("parts sent"), default=0)
    notice_sent_at = models.DateTimeField(_("thinking notice sent"), null=True, blank=True)

    class Meta:
        verbose_name = _("app answer delivery")
        verbose_name_plural = _("app answer deliveries")

    def __str__(self) -> str:
        return f"{self.app} → {self.touser} ({self.turn_id})"

    def part_sent(self, *, index: int) -> None:
        """Record that part `index` (0-based) went out; never moves the count backwards."""
        AppDelivery.objects.filter(pk=self.pk, parts_sent__lte=index).update(parts_sent=index + 1)
        self.parts_sent = max(self.parts_sent, index + 1)


class KfCursor(models.Model):
    """How far 微信客服's messages for one account were pulled and recorded.

    It moves in the transaction that records the pulled messages' turns, so a crash before
    that commit pulls the same messages again and one after it never pulls them twice.
    """

    app = models.ForeignKey(
        WeComApp, on_delete=models.CASCADE, related_name="kf_cursors", verbose_name=_("app")
    )
    open_kfid = models.CharField(_("customer service account"), max_length=64)
    cursor = models.CharField(_("cursor"), max_length=256, blank=True)
    synced_at = models.DateTimeField(_("last pulled"), null=True, blank=True)

    class Meta:
        verbose_name = _("customer service cursor")
        verbose_name_plural = _("customer service cursors")
        constraints = [
            models.UniqueConstraint(fields=["app", "open_kfid"], name="wecomapp_kf_cursor_unique")
        ]

    def __str__(self) -> str:
        return f"{self.app} / {self.open_kfid}"


class KfSession(models.Model):
    """Who answers one customer of one 微信客服 account now: the bot, or a person."""

    class HandledBy(models.TextChoices):
        BOT = "bot", _("bot")
        HUMAN = "human", _("person")

    app = models.ForeignKey(
        WeComApp, on_delete=models.CASCADE, related_name="kf_sessions", verbose_name=_("app")
    )
    open_kfid = models.CharField(_("customer service account"), max_length=64)
    external_userid = models.CharField(_("customer (external_userid)"), max_length=128)
    handled_by = models.CharField(
        _("handled by"), max_length=8, choices=HandledBy.choices, default=HandledBy.BOT
    )
    handed_over_at = models.DateTimeField(_("handed to a person"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("customer service session")
        verbose_name_plural = _("customer service sessions")
        constraints = [
            models.UniqueConstraint(
                fields=["app", "open_kfid", "external_userid"], name="wecomapp_kf_session_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.external_userid} ({self.get_handled_by_display()})"

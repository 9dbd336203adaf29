"""WeChat doors to a bot: an Official Account (公众号) and mini programs.

Their users are outside the company (followers, mini-program users by openid): the turns
they start are external and read only knowledge bases opened to external users.
"""

from __future__ import annotations

from django.db import models
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from apps.core.fields import EncryptedTextField
from wecom import mp


class OfficialAccount(models.Model):
    class Mode(models.TextChoices):
        PLAINTEXT = mp.MODE_PLAINTEXT, _("plaintext")
        COMPATIBLE = mp.MODE_COMPATIBLE, _("compatible")
        SAFE = mp.MODE_SAFE, _("safe (encrypted)")

    name = models.CharField(_("name"), max_length=100)
    slug = models.SlugField(
        _("slug"), max_length=50, unique=True, help_text=_("Part of the callback URL.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    app_id = models.CharField(_("AppID"), max_length=64, unique=True)
    app_secret = EncryptedTextField(
        _("AppSecret"), blank=True, help_text=_("For the access token of the server API.")
    )
    token = EncryptedTextField(
        _("token"), help_text=_("The Token set in the account's server configuration.")
    )
    encoding_aes_key = EncryptedTextField(
        _("EncodingAESKey"),
        blank=True,
        help_text=_("The 43-character key; needed in compatible and safe mode."),
    )
    mode = models.CharField(
        _("message encryption"), max_length=12, choices=Mode.choices, default=Mode.SAFE
    )
    welcome_text = models.TextField(
        _("welcome text"),
        blank=True,
        help_text=_("Sent to a new follower; empty sends nothing."),
    )
    bot = models.ForeignKey(
        "bots.Bot",
        on_delete=models.PROTECT,
        related_name="official_accounts",
        verbose_name=_("bot"),
        help_text=_("Answers the followers' messages (knowledge open to external users only)."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("Official Account")
        verbose_name_plural = _("Official Accounts")
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def callback_path(self) -> str:
        return reverse("wechat:mp-callback", kwargs={"slug": self.slug})

    @property
    def chat_id(self) -> str:
        """The followers' conversations are kept per account (one bot may serve several)."""
        return f"mp:{self.app_id}"


class MiniProgram(models.Model):
    name = models.CharField(_("name"), max_length=100)
    enabled = models.BooleanField(_("enabled"), default=True)
    app_id = models.CharField(_("AppID"), max_length=64, unique=True)
    app_secret = EncryptedTextField(_("AppSecret"), help_text=_("For jscode2session."))
    bots = models.ManyToManyField(
        "bots.Bot",
        related_name="mini_programs",
        verbose_name=_("bots"),
        help_text=_("The bots its users may talk to."),
    )
    rate_limit_per_minute = models.PositiveIntegerField(
        _("questions per minute per user"),
        default=10,
        help_text=_("Per openid; 0 = unlimited."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("mini program")
        verbose_name_plural = _("mini programs")
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

"""Conversations: one person's thread with a bot in one chat, through one kind of door.

A model of its own module (imported by `apps.bots.models`) so the models module stays
within its size budget.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class Conversation(models.Model):
    """One person's thread with a bot in one chat (a group or the 1:1 chat).

    Employees are WeCom userids found in the directory. External people (a 微信客服
    customer, an Official Account follower, a mini-program user, an API key not bound to an
    employee) are kept apart by `external`: the same id string never names both, and an
    external person only ever gets knowledge open to external users.
    """

    class ChatType(models.TextChoices):
        SINGLE = "single", _("1:1 chat")
        GROUP = "group", _("group chat")

    bot = models.ForeignKey(
        "bots.Bot", on_delete=models.CASCADE, related_name="conversations", verbose_name=_("bot")
    )
    chat_type = models.CharField(_("chat type"), max_length=10, choices=ChatType.choices)
    chat_id = models.CharField(_("chat id"), max_length=128, blank=True)
    userid = models.CharField(_("user"), max_length=64)
    external = models.BooleanField(
        _("external user"),
        default=False,
        help_text=_(
            "Someone outside the company (WeChat customer, follower, mini-program user, "
            "API key): answered only from knowledge bases open to external users."
        ),
    )
    created_at = models.DateTimeField(_("started"), auto_now_add=True)
    last_turn_at = models.DateTimeField(_("last question"), null=True, blank=True)

    class Meta:
        app_label = "bots"
        verbose_name = _("conversation")
        verbose_name_plural = _("conversations")
        ordering = ["-last_turn_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["bot", "chat_type", "chat_id", "userid", "external"],
                name="conversation_unique_thread",
            )
        ]

    def __str__(self) -> str:
        where = self.chat_id if self.chat_type == self.ChatType.GROUP else _("1:1 chat")
        return f"{self.bot} · {self.userid} · {where}"

"""Who opened or exported what (AccessLog) and what operators changed (OperatorAuditEntry)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class AccessLog(models.Model):
    """Who opened or exported which record, and why (asked before the record is shown)."""

    class Action(models.TextChoices):
        VIEW = "view", _("view")
        EXPORT = "export", _("export")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("user"),
    )
    username = models.CharField(_("username"), max_length=150)
    action = models.CharField(_("action"), max_length=10, choices=Action.choices)
    object_type = models.CharField(_("object type"), max_length=100)
    object_id = models.CharField(_("object id"), max_length=64)
    object_repr = models.CharField(_("object"), max_length=200, blank=True)
    reason = models.TextField(_("reason"))
    request_id = models.CharField(_("request id"), max_length=64, blank=True)
    opened_with = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("reason given with"),
        help_text=_(
            "The entry where the reason was given, when it was given for another record: "
            "the conversation whose page showed this turn."
        ),
    )
    created_at = models.DateTimeField(_("when"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("access log entry")
        verbose_name_plural = _("access log")
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="access_object"),
            models.Index(fields=["username", "created_at"], name="access_user_time"),
        ]

    def __str__(self) -> str:
        return f"{self.username} {self.action} {self.object_type}:{self.object_id}"


class OperatorAuditEntry(models.Model):
    """A change an operator (or the system, actor empty) made, with before/after state."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("actor"),
    )
    actor_username = models.CharField(_("actor username"), max_length=150, blank=True)
    action = models.CharField(
        _("action"), max_length=100, db_index=True, help_text=_("e.g. bots.prompt.update")
    )
    object_type = models.CharField(_("object type"), max_length=100, blank=True)
    object_id = models.CharField(_("object id"), max_length=64, blank=True)
    object_repr = models.CharField(_("object"), max_length=200, blank=True)
    before = models.JSONField(_("before"), null=True, blank=True)
    after = models.JSONField(_("after"), null=True, blank=True)
    request_id = models.CharField(_("request id"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("when"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("operator audit entry")
        verbose_name_plural = _("operator audit")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="operator_object")]

    def __str__(self) -> str:
        return f"{self.actor_username or 'system'} {self.action} {self.object_repr}"

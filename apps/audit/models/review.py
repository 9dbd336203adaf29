"""Review cases: a flagged turn or archived message waiting for an officer."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from apps.audit.models.archive import ArchivedMessage, ArchiveSource
from apps.audit.models.policy import Action, AuditPolicy


class ReviewCase(models.Model):
    """A turn or archived message a policy flagged (or blocked), waiting for an officer."""

    class Status(models.TextChoices):
        OPEN = "open", _("open")
        DECIDED = "decided", _("decided")

    class Decision(models.TextChoices):
        NONE = "", _("—")
        DISMISSED = "dismissed", _("no violation")
        CONFIRMED = "confirmed", _("violation confirmed")

    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.OPEN
    )
    decision = models.CharField(
        _("decision"), max_length=10, choices=Decision.choices, default=Decision.NONE, blank=True
    )
    note = models.TextField(_("note"), blank=True)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("assignee"),
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("decided by"),
    )
    decided_at = models.DateTimeField(_("decided"), null=True, blank=True)
    turn = models.ForeignKey(
        "bots.Turn",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("bot turn"),
    )
    archived_message = models.ForeignKey(
        ArchivedMessage,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("archived message"),
    )
    # The scope an officer is assigned to (guardian perms on these), kept even if the
    # source row goes away so the case stays visible to the same people.
    bot = models.ForeignKey(
        "bots.Bot",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("bot"),
    )
    archive_source = models.ForeignKey(
        ArchiveSource,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("archive source"),
    )
    policy = models.ForeignKey(
        AuditPolicy,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("policy"),
    )
    action = models.CharField(_("action"), max_length=10, choices=Action.choices)
    matches = models.JSONField(_("matched rules"), default=list, blank=True)
    created_at = models.DateTimeField(_("opened"), auto_now_add=True)

    class Meta:
        verbose_name = _("review case")
        verbose_name_plural = _("review cases")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="review_status_time")]
        constraints = [
            models.CheckConstraint(
                condition=Q(turn__isnull=True) | Q(archived_message__isnull=True),
                name="review_one_source",
            ),
            models.CheckConstraint(
                condition=Q(status="open", decision="") | ~Q(status="open"),
                name="review_open_undecided",
            ),
        ]
        permissions = [
            ("decide_reviewcase", _("Can decide review cases")),
            ("export_reviewcase", _("Can export review cases")),
            ("assign_reviewcase", _("Can assign officers to bots and archive sources")),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_action_display()} · {self.policy or '—'}"

    @property
    def source_ref(self) -> str:
        if self.turn_id:
            return f"bots.turn:{self.turn_id}"
        if self.archived_message_id:
            return f"audit.archivedmessage:{self.archived_message_id}"
        return ""

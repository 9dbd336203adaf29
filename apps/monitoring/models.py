"""Alerting: where alerts go, what fires them, and each incident from firing to resolved."""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from apps.core.fields import EncryptedTextField


class AlertChannel(models.Model):
    """A WeCom group robot or a list of e-mail addresses that alerts are sent to."""

    class Kind(models.TextChoices):
        WECOM_ROBOT = "wecom_robot", _("WeCom group robot")
        EMAIL = "email", _("e-mail")

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(_("kind"), max_length=20, choices=Kind.choices)
    webhook_key = EncryptedTextField(
        _("webhook key"),
        blank=True,
        help_text=_("The key=… part of the group robot's webhook address."),
    )
    email_to = models.TextField(
        _("e-mail recipients"), blank=True, help_text=_("One address per line.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("alert channel")
        verbose_name_plural = _("alert channels")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def recipients(self) -> list[str]:
        return [line.strip() for line in self.email_to.splitlines() if line.strip()]


class AlertRule(models.Model):
    class Kind(models.TextChoices):
        FAILURE_RATE = "failure_rate", _("share of failed turns")
        LATENCY = "latency", _("answer time p95 (seconds)")
        QUEUE_WAIT = "queue_wait", _("oldest waiting question (seconds)")
        ARCHIVE_WINDOW = "archive_window", _("hours since an archive source's last pull")
        LEDGER = "ledger", _("ledger verification fails")
        DELIVERY = "delivery", _("failed answer deliveries")
        DATABASE_SIZE = "database_size", _("database size (GB)")
        DISK_USAGE = "disk_usage", _("share of the data disk used (0–1)")

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(_("measure"), max_length=20, choices=Kind.choices)
    threshold = models.FloatField(
        _("threshold"), help_text=_("The alert fires when the measure is above this value.")
    )
    window_minutes = models.PositiveIntegerField(
        _("window (minutes)"),
        default=15,
        help_text=_("How far back failure share, answer time and deliveries are measured."),
    )
    min_turns = models.PositiveIntegerField(
        _("minimum turns"),
        default=5,
        help_text=_("Failure share and answer time are judged only over at least this many."),
    )
    bot = models.ForeignKey(
        "bots.Bot",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        verbose_name=_("bot"),
        help_text=_("Empty: every bot, each judged on its own."),
    )
    channels = models.ManyToManyField(AlertChannel, related_name="rules", verbose_name=_("send to"))
    repeat_minutes = models.PositiveIntegerField(
        _("remind every (minutes)"),
        default=0,
        help_text=_("While the alert keeps firing; 0 sends it once until it resolves."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("alert rule")
        verbose_name_plural = _("alert rules")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AlertIncident(models.Model):
    """One stretch of a rule firing for one subject (a bot, model, source…): opened once,
    announced once (plus reminders), resolved once."""

    rule = models.ForeignKey(
        AlertRule, on_delete=models.CASCADE, related_name="incidents", verbose_name=_("rule")
    )
    subject = models.CharField(_("subject"), max_length=200)
    value = models.FloatField(_("last value"))
    opened_at = models.DateTimeField(_("opened"))
    resolved_at = models.DateTimeField(_("resolved"), null=True, blank=True)
    # Channel ids each message reached: a retry after a partial failure skips them.
    delivered = models.JSONField(_("delivered"), default=dict, blank=True)
    announced_at = models.DateTimeField(_("announced"), null=True, blank=True)
    reminded_at = models.DateTimeField(_("last reminder"), null=True, blank=True)
    resolution_sent_at = models.DateTimeField(_("resolution sent"), null=True, blank=True)
    last_error = models.TextField(_("last delivery error"), blank=True)

    class Meta:
        verbose_name = _("alert incident")
        verbose_name_plural = _("alert incidents")
        ordering = ["-opened_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "subject"],
                condition=Q(resolved_at__isnull=True),
                name="alert_incident_one_open",
            )
        ]
        indexes = [models.Index(fields=["resolved_at", "opened_at"], name="alert_incident_state")]

    def __str__(self) -> str:
        return f"{self.rule} · {self.subject}"


# Upper edges (seconds) of the latency histograms kept per hour; the last bucket is open.
LATENCY_EDGES = (0.5, 1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120, 180, 240, 330)


class TurnRollup(models.Model):
    """One hour of one bot's turns on one channel, summed for the dashboard.

    Beat recomputes the current and the previous hour every minute; the dashboard reads
    these rows (a few thousand for a month) instead of millions of turns. Latencies are
    histograms over `LATENCY_EDGES`, so percentiles over any period are merged exactly
    bucket by bucket and interpolated within one bucket.
    """

    hour = models.DateTimeField(_("hour"))
    bot = models.ForeignKey("bots.Bot", on_delete=models.CASCADE, verbose_name=_("bot"))
    channel = models.CharField(_("channel"), max_length=20)
    questions = models.PositiveIntegerField(default=0)
    users = models.PositiveIntegerField(default=0)
    answered = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    fixed_replies = models.PositiveIntegerField(default=0)
    with_sources = models.PositiveIntegerField(default=0)
    blocked = models.PositiveIntegerField(default=0)
    masked = models.PositiveIntegerField(default=0)
    flagged = models.PositiveIntegerField(default=0)
    feedback_up = models.PositiveIntegerField(default=0)
    feedback_down = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    decode_seconds = models.FloatField(default=0.0)
    first_token_histogram = ArrayField(models.PositiveIntegerField(), default=list)
    total_histogram = ArrayField(models.PositiveIntegerField(), default=list)
    queue_wait_histogram = ArrayField(models.PositiveIntegerField(), default=list)
    # "failed:<first line of the error>" or "rejected:<reason>" → turns.
    failure_reasons = models.JSONField(default=dict)
    computed_at = models.DateTimeField(_("computed"), auto_now=True)

    class Meta:
        verbose_name = _("hourly turn summary")
        verbose_name_plural = _("hourly turn summaries")
        constraints = [
            models.UniqueConstraint(fields=["hour", "bot", "channel"], name="turn_rollup_hour")
        ]
        permissions = [("view_dashboard", _("Can view the operations dashboard"))]

    def __str__(self) -> str:
        return f"{self.bot_id} {self.channel} {self.hour:%Y-%m-%d %H:00}"

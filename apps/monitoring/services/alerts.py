"""Alert evaluation and delivery: each incident fires once, reminds if asked, resolves once.

Beat runs `alerts_run` every minute. One evaluator at a time (a transaction-scoped advisory
lock), one open incident per rule and subject (a partial unique constraint), and per
channel a record of which messages reached it, so a retry after a partial failure — a
robot over WeCom's 20 messages a minute, a mail server down — sends only what is missing.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.translation import gettext as _

from apps.core.language import deployment_language
from apps.monitoring.models import AlertChannel, AlertIncident, AlertRule
from apps.monitoring.services.measures import MEASURES
from wecom.robot import MESSAGES_PER_MINUTE, RobotError, robot_send_markdown

logger = logging.getLogger(__name__)

ALERTS_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"apps.monitoring.alerts").digest()[:8], "big", signed=True
)


class ChannelBusy(Exception):
    """The channel cannot take another message now; the next run tries again."""


@dataclass
class AlertsRun:
    opened: int = 0
    resolved: int = 0
    sent: int = 0
    failed: list[str] = field(default_factory=list)


def _incidents_update(
    rule: AlertRule, values: dict[str, float], now: datetime, run: AlertsRun
) -> None:
    firing = {subject: value for subject, value in values.items() if value > rule.threshold}
    open_incidents = {i.subject: i for i in rule.incidents.filter(resolved_at__isnull=True)}
    for subject, value in firing.items():
        incident = open_incidents.get(subject)
        if incident is not None:
            AlertIncident.objects.filter(pk=incident.pk).update(value=value)
            continue
        try:
            with transaction.atomic():
                AlertIncident.objects.create(rule=rule, subject=subject, value=value, opened_at=now)
            run.opened += 1
        except IntegrityError:
            pass  # opened meanwhile: the partial unique constraint keeps it one
    for subject, incident in open_incidents.items():
        if subject not in firing:
            run.resolved += AlertIncident.objects.filter(
                pk=incident.pk, resolved_at__isnull=True
            ).update(resolved_at=now)


def _text(incident: AlertIncident, event: str) -> tuple[str, str]:
    """(title, markdown body) in the deployment's language."""
    rule = incident.rule
    with deployment_language():
        title = {
            "firing": _("[Alert] %(rule)s") % {"rule": rule.name},
            "reminder": _("[Still firing] %(rule)s") % {"rule": rule.name},
            "resolved": _("[Resolved] %(rule)s") % {"rule": rule.name},
        }[event]
        lines = [
            f"**{title}**",
            "> " + _("Measure: %(kind)s") % {"kind": rule.get_kind_display()},
            "> " + _("Subject: %(subject)s") % {"subject": incident.subject},
            "> "
            + _("Value: %(value).3g (threshold %(threshold).3g)")
            % {"value": incident.value, "threshold": rule.threshold},
            "> "
            + _("Since: %(when)s")
            % {"when": date_format(timezone.localtime(incident.opened_at), "DATETIME_FORMAT")},
        ]
        if event == "resolved" and incident.resolved_at is not None:
            lines.append(
                "> "
                + _("Resolved: %(when)s")
                % {"when": date_format(timezone.localtime(incident.resolved_at), "DATETIME_FORMAT")}
            )
    return title, "\n".join(lines)


def _channel_slot(channel: AlertChannel, now: datetime) -> None:
    """Take one of the robot's messages for this minute (WeCom allows 20 a minute)."""
    if channel.kind != AlertChannel.Kind.WECOM_ROBOT:
        return
    key = f"alerts:robot:{channel.pk}:{int(now.timestamp() // 60)}"
    cache.add(key, 0, timeout=120)
    if cache.incr(key) > MESSAGES_PER_MINUTE:
        raise ChannelBusy(_("the robot already sent 20 messages this minute"))


def channel_send(*, channel: AlertChannel, title: str, body: str, now: datetime) -> None:
    _channel_slot(channel, now)
    if channel.kind == AlertChannel.Kind.WECOM_ROBOT:
        robot_send_markdown(key=channel.webhook_key, content=body, base_url=settings.WECOM_API_BASE)
    else:
        send_mail(title, body, None, channel.recipients(), fail_silently=False)


def _deliver(incident: AlertIncident, event: str, tag: str, now: datetime, run: AlertsRun) -> bool:
    """Send `event` to every enabled channel it has not reached; True once all have it."""
    reached = set(incident.delivered.get(tag, []))
    title, body = _text(incident, event)
    errors = []
    for channel in incident.rule.channels.filter(enabled=True):
        if channel.pk in reached:
            continue
        try:
            channel_send(channel=channel, title=title, body=body, now=now)
        except (RobotError, ChannelBusy, OSError) as exc:
            errors.append(f"{channel.name}: {exc}")
            continue
        reached.add(channel.pk)
        run.sent += 1
    incident.delivered = {**incident.delivered, tag: sorted(reached)}
    incident.last_error = "; ".join(errors)
    if errors:
        run.failed += errors
        logger.warning("alert %s not delivered everywhere: %s", incident.pk, incident.last_error)
    return not errors


def _notify(now: datetime, run: AlertsRun) -> None:
    pending = AlertIncident.objects.select_related("rule").filter(
        rule__enabled=True, announced_at__isnull=True, resolved_at__isnull=True
    )
    for incident in pending:
        if _deliver(incident, "firing", "firing", now, run):
            incident.announced_at = now
        incident.save(update_fields=["delivered", "last_error", "announced_at"])
    reminders = AlertIncident.objects.select_related("rule").filter(
        rule__enabled=True,
        rule__repeat_minutes__gt=0,
        announced_at__isnull=False,
        resolved_at__isnull=True,
    )
    for incident in reminders:
        last = incident.reminded_at or incident.announced_at
        assert last is not None
        if last > now - timedelta(minutes=incident.rule.repeat_minutes):
            continue
        tag = f"reminder:{int(last.timestamp())}"
        if _deliver(incident, "reminder", tag, now, run):
            incident.reminded_at = now
            incident.delivered = {
                k: v for k, v in incident.delivered.items() if not k.startswith("reminder:")
            }
        incident.save(update_fields=["delivered", "last_error", "reminded_at"])
    # Only what was announced is resolved aloud; an incident nobody heard of ends quietly.
    resolved = AlertIncident.objects.select_related("rule").filter(
        announced_at__isnull=False, resolved_at__isnull=False, resolution_sent_at__isnull=True
    )
    for incident in resolved:
        if _deliver(incident, "resolved", "resolved", now, run):
            incident.resolution_sent_at = now
        incident.save(update_fields=["delivered", "last_error", "resolution_sent_at"])


def alerts_run(*, now: datetime | None = None) -> AlertsRun | None:
    """Evaluate every enabled rule and send what is due; None when another run holds the lock."""
    now = now or timezone.now()
    run = AlertsRun()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [ALERTS_LOCK_KEY])
            if not cursor.fetchone()[0]:
                return None
        for rule in AlertRule.objects.filter(enabled=True):
            try:
                with transaction.atomic():
                    values = MEASURES[rule.kind](rule, now)
            except DatabaseError:
                logger.exception("alert rule %s could not be measured", rule.pk)
                continue
            _incidents_update(rule, values, now, run)
        _notify(now, run)
    return run


def channel_test(*, channel: AlertChannel) -> None:
    """Send a test message now (raises RobotError/OSError with what went wrong)."""
    with deployment_language():
        title = _("[Test] WeCom AI alerts")
        body = f"**{title}**\n> " + _("This channel receives the platform's alerts.")
    channel_send(channel=channel, title=title, body=body, now=timezone.now())

"""When sources are due and when they are late: WeCom deletes records after 5 days."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.audit.models import ArchiveSource
from apps.core.language import deployment_language

# One logger for the whole package, as when it was one module.
logger = logging.getLogger(__package__)

ARCHIVE_WINDOW = dt.timedelta(days=5)


def gap_warning_after() -> dt.timedelta:
    """How old the newest pulled data may get before the source warns (default 4 days)."""
    hours = getattr(settings, "AUDIT_ARCHIVE_GAP_WARNING_HOURS", 96)
    return dt.timedelta(hours=float(hours))


def archive_gap_check(*, now: dt.datetime | None = None) -> list[ArchiveSource]:
    """Warn about enabled sources whose last successful pull is close to the 5-day window."""
    now = now or timezone.now()
    limit = now - gap_warning_after()
    # A source that never pulled successfully is as late as its age.
    never = Q(last_success_at__isnull=True, created_at__lt=limit)
    late = list(
        ArchiveSource.objects.filter(Q(last_success_at__lt=limit) | never, enabled=True).exclude(
            health=ArchiveSource.Health.ERROR
        )
    )
    for source in late:
        since = source.last_success_at or source.created_at
        with deployment_language():
            if source.last_success_at:
                what = _(
                    "no successful pull since %(time)s UTC; WeCom deletes records after 5 days"
                )
            else:
                what = _("never pulled since %(time)s UTC; WeCom deletes records after 5 days")
        message = what % {"time": f"{since:%Y-%m-%d %H:%M}"}
        logger.error("archive source %s (%s): %s", source.pk, source.name, message)
        ArchiveSource.objects.filter(pk=source.pk).update(
            health=ArchiveSource.Health.WARNING, status_message=message
        )
    return late


def archive_sources_due(*, now: dt.datetime | None = None) -> list[int]:
    """Ids of enabled sources whose pull interval has passed."""
    now = now or timezone.now()
    due = []
    for source in ArchiveSource.objects.filter(enabled=True).only(
        "pk", "last_pull_at", "pull_interval_minutes"
    ):
        interval = dt.timedelta(minutes=source.pull_interval_minutes)
        if source.last_pull_at is None or now - source.last_pull_at >= interval:
            due.append(source.pk)
    return due

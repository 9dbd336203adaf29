"""What each alert rule measures, per subject, read from the database.

A measure returns `{subject: value}`; the rule fires for every subject whose value is
above its threshold. Subjects are stable names (`bot:hr`, `model:SmolLM2`, `source:corp`)
so an incident keeps its identity from one evaluation to the next.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Min, Q, QuerySet

from apps.audit.models import ArchiveSource
from apps.audit.services.ledger import ledger_verify
from apps.bots.models import Bot, Turn
from apps.monitoring.models import AlertRule

LEDGER_VERIFY_CACHE_SECONDS = 3600  # verification walks the whole chain: hourly is enough


def _ended(rule: AlertRule, now: datetime) -> QuerySet[Turn]:
    turns = Turn.objects.filter(
        finished_at__gte=now - timedelta(minutes=rule.window_minutes), is_test=False
    )
    return turns.filter(bot_id=rule.bot_id) if rule.bot_id else turns


def failure_share(rule: AlertRule, now: datetime) -> dict[str, float]:
    rows = (
        _ended(rule, now)
        .filter(status__in=(Turn.Status.ANSWERED, Turn.Status.FAILED))
        .values("bot__slug")
        .annotate(total=Count("id"), failed=Count("id", filter=Q(status=Turn.Status.FAILED)))
        .order_by()
    )
    return {
        f"bot:{row['bot__slug']}": row["failed"] / row["total"]
        for row in rows
        if row["total"] >= max(rule.min_turns, 1)
    }


def answer_time_p95(rule: AlertRule, now: datetime) -> dict[str, float]:
    bot_filter = "AND t.bot_id = %s" if rule.bot_id else ""
    params: list[object] = [now - timedelta(minutes=rule.window_minutes), Turn.Status.ANSWERED]
    if rule.bot_id:
        params.append(rule.bot_id)
    params.append(max(rule.min_turns, 1))
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT b.slug, percentile_cont(0.95) WITHIN GROUP (
                ORDER BY EXTRACT(EPOCH FROM t.finished_at - t.received_at))
            FROM {Turn._meta.db_table} t JOIN {Bot._meta.db_table} b ON b.id = t.bot_id
            WHERE t.finished_at >= %s AND t.status = %s AND NOT t.is_test {bot_filter}
            GROUP BY b.slug HAVING count(*) >= %s
            """,  # noqa: S608 - table names from the models, values as parameters
            params,
        )
        return {f"bot:{slug}": float(p95) for slug, p95 in cursor.fetchall()}


def oldest_waiting(rule: AlertRule, now: datetime) -> dict[str, float]:
    turns = Turn.objects.filter(status=Turn.Status.QUEUED, is_test=False)
    if rule.bot_id:
        turns = turns.filter(bot_id=rule.bot_id)
    rows = turns.values("bot__model_profile__name").annotate(first=Min("received_at")).order_by()
    return {
        f"model:{row['bot__model_profile__name']}": (now - row["first"]).total_seconds()
        for row in rows
    }


def archive_hours(rule: AlertRule, now: datetime) -> dict[str, float]:
    return {
        f"source:{name}": (now - (last or created)).total_seconds() / 3600
        for name, last, created in ArchiveSource.objects.filter(enabled=True).values_list(
            "name", "last_success_at", "created_at"
        )
    }


def ledger_broken(rule: AlertRule, now: datetime) -> dict[str, float]:
    ok = cache.get("alerts:ledger-verified")
    if ok is None:
        ok = ledger_verify(anchor_file=settings.AUDIT_LEDGER_ANCHOR_FILE).ok
        cache.set("alerts:ledger-verified", ok, LEDGER_VERIFY_CACHE_SECONDS)
    return {"ledger": 0.0 if ok else 1.0}


def delivery_failures(rule: AlertRule, now: datetime) -> dict[str, float]:
    rows = (
        _ended(rule, now)
        .filter(error__startswith=Turn.RESPONSE_URL_FAILED)
        .values("bot__slug")
        .annotate(n=Count("id"))
        .order_by()
    )
    return {f"bot:{row['bot__slug']}": float(row["n"]) for row in rows}


def database_gigabytes(rule: AlertRule, now: datetime) -> dict[str, float]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        (size,) = cursor.fetchone()
    return {"database": size / 1e9}


def disk_used_share(rule: AlertRule, now: datetime) -> dict[str, float]:
    """The disk holding the data directory (uploads, models, ledger anchors) of the host
    that evaluates the rules (the default worker)."""
    usage = shutil.disk_usage(settings.DATA_DIR)
    return {f"disk:{socket.gethostname()}": usage.used / usage.total}


MEASURES: dict[str, Callable[[AlertRule, datetime], dict[str, float]]] = {
    AlertRule.Kind.FAILURE_RATE: failure_share,
    AlertRule.Kind.LATENCY: answer_time_p95,
    AlertRule.Kind.QUEUE_WAIT: oldest_waiting,
    AlertRule.Kind.ARCHIVE_WINDOW: archive_hours,
    AlertRule.Kind.LEDGER: ledger_broken,
    AlertRule.Kind.DELIVERY: delivery_failures,
    AlertRule.Kind.DATABASE_SIZE: database_gigabytes,
    AlertRule.Kind.DISK_USAGE: disk_used_share,
}

"""The dashboard's figures for a period, bots and channel, read from the hourly summaries.

A month of summaries is a few thousand rows whatever the number of turns, so the page
stays fast; only active users are read live, from the conversations (one row per user
and chat, far fewer than turns).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from apps.bots.models import Bot, Conversation
from apps.bots.services.trial import TRIAL_CHAT_PREFIX
from apps.monitoring.models import LATENCY_EDGES, TurnRollup

PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
SUMMED = (
    "questions", "users", "answered", "failed", "rejected", "fixed_replies", "with_sources",
    "blocked", "masked", "flagged", "feedback_up", "feedback_down", "prompt_tokens",
    "completion_tokens", "decode_seconds",
)  # fmt: skip
HISTOGRAMS = ("first_token_histogram", "total_histogram", "queue_wait_histogram")


@dataclass(frozen=True)
class DashboardQuery:
    start: datetime
    end: datetime
    bot_ids: tuple[int, ...]
    channel: str = ""

    @property
    def bucket(self) -> timedelta:
        return (
            timedelta(hours=1)
            if self.end - self.start <= timedelta(hours=48)
            else timedelta(days=1)
        )


def percentile(histogram: list[int], fraction: float) -> float | None:
    """The `fraction` quantile of a histogram over LATENCY_EDGES, linear within its bucket."""
    total = sum(histogram)
    if not total:
        return None
    target, seen = fraction * total, 0
    for index, count in enumerate(histogram):
        if count and seen + count >= target:
            lower = LATENCY_EDGES[index - 1] if index else 0.0
            upper = LATENCY_EDGES[index] if index < len(LATENCY_EDGES) else lower * 1.5
            return lower + (upper - lower) * (target - seen) / count
        seen += count
    return float(LATENCY_EDGES[-1])


def _merge(into: list[int], histogram: list[int]) -> list[int]:
    if not into:
        return list(histogram)
    return [a + b for a, b in zip(into, histogram, strict=False)]


def _rollups(query: DashboardQuery) -> QuerySet[TurnRollup]:
    rows = TurnRollup.objects.filter(
        bot_id__in=query.bot_ids,
        hour__gte=query.start.replace(minute=0, second=0, microsecond=0),
        hour__lt=query.end,
    )
    return rows.filter(channel=query.channel) if query.channel else rows


def _bucket_start(moment: datetime, bucket: timedelta) -> datetime:
    local = timezone.localtime(moment)
    if bucket >= timedelta(days=1):
        return local.replace(hour=0, minute=0, second=0, microsecond=0)
    return local.replace(minute=0, second=0, microsecond=0)


def _failure_rows(reasons: Counter[str]) -> list[dict[str, Any]]:
    rows = []
    for key, count in reasons.most_common(10):
        status, _sep, reason = key.partition(":")
        rows.append({"status": status, "reason": reason, "count": count})
    return rows


def dashboard_data(query: DashboardQuery) -> dict[str, Any]:
    totals: dict[str, float] = dict.fromkeys(SUMMED, 0)
    histograms: dict[str, list[int]] = {name: [] for name in HISTOGRAMS}
    reasons: Counter[str] = Counter()
    series: dict[datetime, dict[str, Any]] = defaultdict(
        lambda: {**dict.fromkeys(SUMMED, 0), **{name: [] for name in HISTOGRAMS}}
    )
    rows = _rollups(query).values("hour", "failure_reasons", *SUMMED, *HISTOGRAMS)
    for row in rows.iterator():  # plain dicts: a month is thousands of rows
        point = series[_bucket_start(row["hour"], query.bucket)]
        for name in SUMMED:
            totals[name] += row[name]
            point[name] += row[name]
        reasons.update(row["failure_reasons"])
        for name in HISTOGRAMS:
            histograms[name] = _merge(histograms[name], row[name])
            point[name] = _merge(point[name], row[name])
    hours = query.bucket.total_seconds() / 3600
    points = [
        {
            "at": moment.isoformat(),
            "questions": point["questions"],
            # Distinct users per hour; a day's sum of hours would count people twice.
            "users": point["users"] if query.bucket < timedelta(days=1) else None,
            "failed": point["failed"],
            "rejected": point["rejected"],
            "completion_tokens": point["completion_tokens"],
            "first_token_p95": percentile(point["first_token_histogram"], 0.95),
            "total_p95": percentile(point["total_histogram"], 0.95),
            "queue_wait_p95": percentile(point["queue_wait_histogram"], 0.95),
            # Average answers being decoded at once: the engines' load.
            "load": point["decode_seconds"] / (hours * 3600),
        }
        for moment, point in sorted(series.items())
    ]
    feedback = totals["feedback_up"] + totals["feedback_down"]
    active_users = (
        Conversation.objects.filter(bot_id__in=query.bot_ids, last_turn_at__gte=query.start)
        .exclude(chat_id__startswith=TRIAL_CHAT_PREFIX)
        .values("userid")
        .distinct()
        .count()
    )
    return {
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "bucket": "hour" if query.bucket < timedelta(days=1) else "day",
        "totals": {
            **{name: totals[name] for name in SUMMED if name != "users"},
            "active_users": active_users,
            "feedback_up_share": totals["feedback_up"] / feedback if feedback else None,
            "source_hit_rate": totals["with_sources"] / totals["answered"]
            if totals["answered"]
            else None,
        },
        "latency": {
            name.removesuffix("_histogram"): {
                f"p{round(q * 100)}": percentile(histograms[name], q) for q in (0.5, 0.95, 0.99)
            }
            for name in HISTOGRAMS
        },
        "series": points,
        "failures": _failure_rows(reasons),
    }


def dashboard_bots(user: Any) -> QuerySet[Bot]:
    """The bots whose figures `user` may see: every bot for a dashboard viewer."""
    return (
        Bot.objects.order_by("name")
        if user.has_perm("monitoring.view_dashboard")
        else Bot.objects.none()
    )

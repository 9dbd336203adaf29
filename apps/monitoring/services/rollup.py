"""Hourly summaries of turns for the dashboard, recomputed in one SQL statement per range.

Each hour of each bot and channel is recomputed from the turns that arrived in it and
written with INSERT … ON CONFLICT, so a run is idempotent and late ends (a turn that
arrived at 10:59 and ended at 11:02) are picked up when the hour is recomputed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from apps.bots.models import Conversation, Turn
from apps.monitoring.models import LATENCY_EDGES, TurnRollup

RECENT_HOURS = 2  # the current hour and the one before: ends arrive a few minutes late

CHANNEL_SQL = "t.channel"
FIRST_TOKEN_SQL = "EXTRACT(EPOCH FROM t.first_token_at - t.received_at)"  # noqa: S105 - SQL, not a secret
TOTAL_SQL = "EXTRACT(EPOCH FROM t.finished_at - t.received_at)"
QUEUE_WAIT_SQL = "EXTRACT(EPOCH FROM t.claimed_at - t.queued_at)"
FLAGGED_SQL = (
    '(t.filter_decisions @> \'[{"action": "flag"}]\''
    " OR jsonb_path_exists(t.filter_decisions, '$[*].matches[*] ? (@.action == \"flag\")'))"
)


def _histogram(value_sql: str, condition: str) -> str:
    """ARRAY of counts per bucket: width_bucket over the edges gives 0 … len(edges)."""
    edges = "ARRAY[" + ",".join(f"{edge}::float8" for edge in LATENCY_EDGES) + "]"
    bucket = f"width_bucket({value_sql}, {edges})"
    counts = [
        f"count(*) FILTER (WHERE {condition} AND {bucket} = {index})"
        for index in range(len(LATENCY_EDGES) + 1)
    ]
    return "ARRAY[" + ", ".join(counts) + "]"


def _statement() -> str:
    answered = f"t.status = '{Turn.Status.ANSWERED}'"
    columns = {
        "questions": "count(*)",
        "users": "count(DISTINCT c.userid)",
        "answered": f"count(*) FILTER (WHERE {answered})",
        "failed": f"count(*) FILTER (WHERE t.status = '{Turn.Status.FAILED}')",
        "rejected": f"count(*) FILTER (WHERE t.status = '{Turn.Status.REJECTED}')",
        "fixed_replies": "count(*) FILTER (WHERE t.fixed_reply_reason <> '')",
        "with_sources": (
            f"count(*) FILTER (WHERE {answered} AND jsonb_typeof(t.sources) = 'array'"
            " AND jsonb_array_length(t.sources) > 0)"
        ),
        "blocked": 'count(*) FILTER (WHERE t.filter_decisions @> \'[{"action": "block"}]\')',
        "masked": 'count(*) FILTER (WHERE t.filter_decisions @> \'[{"action": "mask"}]\')',
        "flagged": f"count(*) FILTER (WHERE {FLAGGED_SQL})",
        "feedback_up": f"count(*) FILTER (WHERE t.feedback = {Turn.Feedback.ACCURATE})",
        "feedback_down": f"count(*) FILTER (WHERE t.feedback = {Turn.Feedback.INACCURATE})",
        "prompt_tokens": "coalesce(sum(t.prompt_tokens), 0)",
        "completion_tokens": "coalesce(sum(t.completion_tokens), 0)",
        "decode_seconds": (
            f"coalesce(sum(EXTRACT(EPOCH FROM t.finished_at - t.first_token_at))"
            f" FILTER (WHERE {answered} AND t.first_token_at IS NOT NULL), 0)"
        ),
        "first_token_histogram": _histogram(FIRST_TOKEN_SQL, "t.first_token_at IS NOT NULL"),
        "total_histogram": _histogram(TOTAL_SQL, f"{answered} AND t.finished_at IS NOT NULL"),
        "queue_wait_histogram": _histogram(
            QUEUE_WAIT_SQL, "t.claimed_at IS NOT NULL AND t.queued_at IS NOT NULL"
        ),
    }
    columns["failure_reasons"] = "'{}'::jsonb"  # filled by the second statement
    names = ", ".join(columns)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in [*columns, "computed_at"])
    return f"""
        INSERT INTO {TurnRollup._meta.db_table} (hour, bot_id, channel, {names}, computed_at)
        SELECT date_trunc('hour', t.received_at), t.bot_id, {CHANNEL_SQL},
               {", ".join(columns.values())}, now()
        FROM {Turn._meta.db_table} t
        JOIN {Conversation._meta.db_table} c ON c.id = t.conversation_id
        WHERE t.received_at >= %s AND t.received_at < %s AND NOT t.is_test
        GROUP BY 1, 2, 3
        ON CONFLICT (hour, bot_id, channel) DO UPDATE SET {updates}
    """  # noqa: S608 - names from the models and constants, values as parameters


_STATEMENT = _statement()

_REASONS_STATEMENT = f"""
    UPDATE {TurnRollup._meta.db_table} r SET failure_reasons = s.reasons
    FROM (
        SELECT hour, bot_id, channel, jsonb_object_agg(reason, n) AS reasons
        FROM (
            SELECT date_trunc('hour', t.received_at) AS hour, t.bot_id, {CHANNEL_SQL} AS channel,
                   t.status || ':' || CASE WHEN t.rejection_reason <> '' THEN t.rejection_reason
                       ELSE split_part(left(t.error, 80), E'\n', 1) END AS reason,
                   count(*) AS n
            FROM {Turn._meta.db_table} t
            WHERE t.received_at >= %s AND t.received_at < %s AND NOT t.is_test
              AND t.status IN ('{Turn.Status.FAILED}', '{Turn.Status.REJECTED}')
            GROUP BY 1, 2, 3, 4
        ) per_reason
        GROUP BY 1, 2, 3
    ) s
    WHERE r.hour = s.hour AND r.bot_id = s.bot_id AND r.channel = s.channel
"""  # noqa: S608 - names from the models and constants, values as parameters


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def rollup_refresh(*, since: datetime, until: datetime) -> int:
    """Recompute every hour from `since`'s hour up to `until`; returns the rows written."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_STATEMENT, [_hour(since), until])
        written = cursor.rowcount
        cursor.execute(_REASONS_STATEMENT, [_hour(since), until])
    return written


def rollup_recent(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    return rollup_refresh(since=now - timedelta(hours=RECENT_HOURS - 1), until=now)

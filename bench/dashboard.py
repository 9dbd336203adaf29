"""Dashboard load time over a million turns, next to the plain admin index in the same run.

Generates N turns (default 1,000,000) over the last 30 days in SQL (statuses, latencies,
tokens, feedback, policy decisions and sources in realistic shares), fills the hourly
summaries with `dashboard_rollup`, then loads the dashboard (24 h, 7 d, 30 d) and the
plain admin index through Django's handler in ABBA rounds. For scale it also times the
same 30-day totals computed straight from the turns (what the summaries save).

    .venv/bin/python bench/dashboard.py [--turns 1000000] [--loads 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import BenchStack

USERS = 3000


def _generate(turns: int) -> float:
    from django.db import connection

    from apps.bots.models import Bot, Conversation, Turn

    bot = Bot.objects.get(slug="bench")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {Conversation._meta.db_table} (bot_id, chat_type, chat_id, userid,
                                                      created_at, last_turn_at)
            SELECT %s, 'single', '', 'dash-user-' || u, now() - interval '30 days',
                   now() - (random() * interval '30 days')
            FROM generate_series(1, %s) u
            ON CONFLICT DO NOTHING
            """,
            [bot.pk, USERS],
        )
        cursor.execute(
            f"""
            INSERT INTO {Turn._meta.db_table} (
                bot_id, conversation_id, msgid, stream_id, msgtype, question, question_masked,
                answer, reasoning, withheld_answer, filter_decisions, sources, status,
                rejection_reason, fixed_reply_reason, error, response_url, longconn_req_id,
                attempts, prompt_tokens, completion_tokens, finish_reason, received_at,
                queued_at, claimed_at, first_token_at, finished_at, feedback, feedback_detail,
                is_test)
            SELECT %s, c.id, 'dash-' || g.i, 'dash-s-' || g.i, 'text', 'q', '', 'a', '', '',
                   CASE WHEN g.r < 0.01 THEN '[{{"action": "block", "matches": []}}]'::jsonb
                        WHEN g.r < 0.03 THEN '[{{"action": "mask", "matches": []}}]'::jsonb
                        ELSE '[]'::jsonb END,
                   CASE WHEN g.r < 0.7 THEN '[{{"document": 1}}]'::jsonb ELSE '[]'::jsonb END,
                   CASE WHEN g.r > 0.98 THEN 'failed' WHEN g.r > 0.96 THEN 'rejected'
                        ELSE 'answered' END,
                   CASE WHEN g.r > 0.96 AND g.r <= 0.98 THEN 'rate_limited' ELSE '' END,
                   '', CASE WHEN g.r > 0.98 THEN 'worker lost' ELSE '' END, '',
                   CASE WHEN g.r < 0.3 THEN 'req-' || g.i ELSE '' END,
                   1, 300, 40 + (g.r * 200)::int, 'stop', g.t, g.t,
                   g.t + make_interval(secs => g.r * 2),
                   g.t + make_interval(secs => 0.5 + g.r * 3),
                   g.t + make_interval(secs => 2 + g.r * 20),
                   CASE WHEN g.r < 0.1 THEN 1 WHEN g.r < 0.12 THEN 2 END, '{{}}'::jsonb, false
            FROM (SELECT i, random() AS r, now() - (random() * interval '30 days') AS t
                  FROM generate_series(1, %s) i) g
            JOIN {Conversation._meta.db_table} c
              ON c.bot_id = %s AND c.userid = 'dash-user-' || (1 + g.i %% %s)
            """,
            [bot.pk, turns, bot.pk, USERS],
        )
        cursor.execute(f"ANALYZE {Turn._meta.db_table}")
    return time.perf_counter() - started


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def run(*, turns: int, loads: int) -> dict[str, Any]:
    with BenchStack(with_inference_worker=False):
        from django.contrib.auth.models import Permission, User
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client

        from apps.bots.models import Turn

        generate_seconds = _generate(turns)
        started = time.perf_counter()
        call_command("dashboard_rollup", "--days", "31", stdout=open("/dev/null", "w"))  # noqa: SIM115
        rollup_seconds = time.perf_counter() - started

        viewer, _ = User.objects.get_or_create(username="dash-viewer", defaults={"is_staff": True})
        viewer.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
        clerk, _ = User.objects.get_or_create(username="dash-clerk", defaults={"is_staff": True})
        clients = {"dashboard": Client(), "plain index": Client()}
        clients["dashboard"].force_login(viewer)
        clients["plain index"].force_login(clerk)
        paths = {
            "dashboard 24h": ("dashboard", "/admin/?period=24h"),
            "dashboard 7d": ("dashboard", "/admin/?period=7d"),
            "dashboard 30d": ("dashboard", "/admin/?period=30d"),
            "plain index": ("plain index", "/admin/"),
        }
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for round_number in range(loads):
            order = list(paths) if round_number % 2 == 0 else list(reversed(paths))
            for name in order:
                client_name, path = paths[name]
                started = time.perf_counter()
                response = clients[client_name].get(path)
                samples[name].append(time.perf_counter() - started)
                assert response.status_code == 200, (name, response.status_code)

        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute(
                f"""SELECT count(*), count(*) FILTER (WHERE status = 'failed'),
                           percentile_cont(0.95) WITHIN GROUP
                             (ORDER BY EXTRACT(EPOCH FROM finished_at - received_at))
                    FROM {Turn._meta.db_table}
                    WHERE received_at >= now() - interval '30 days'"""
            )
            cursor.fetchall()
        live_seconds = time.perf_counter() - started
        turns_stored = Turn.objects.count()
    return {
        "turns": turns_stored,
        "generate_seconds": generate_seconds,
        "rollup_seconds": rollup_seconds,
        "live_30d_totals_ms": live_seconds * 1000,
        "p50_ms": {name: _median_ms(values) for name, values in samples.items()},
    }


def render(result: dict[str, Any]) -> str:
    base = result["p50_ms"]["plain index"]
    lines = [
        f"{result['turns']:,} turns over 30 days (generated in {result['generate_seconds']:.0f} s);"
        f" hourly summaries for 31 days written in {result['rollup_seconds']:.1f} s",
        "",
        f"{'page':<18}{'p50 ms':>10}{'x plain index':>15}",
    ]
    for name, value in result["p50_ms"].items():
        lines.append(f"{name:<18}{value:>10.1f}{value / base:>15.2f}")
    lines += [
        "",
        "the same 30-day totals and p95 straight from the turns: "
        f"{result['live_30d_totals_ms']:.0f} ms",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=1_000_000)
    parser.add_argument("--loads", type=int, default=10, help="loads of each page")
    args = parser.parse_args(argv)
    print(render(run(turns=args.turns, loads=args.loads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

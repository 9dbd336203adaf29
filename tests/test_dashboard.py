"""The dashboard: hourly summaries that match the turns exactly, percentiles merged from
their histograms, and a home page only those with the permission see."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from apps.bots.models import Conversation, Turn
from apps.monitoring.models import LATENCY_EDGES, TurnRollup
from apps.monitoring.selectors import DashboardQuery, dashboard_data, percentile
from apps.monitoring.services.rollup import rollup_recent, rollup_refresh

pytestmark = pytest.mark.django_db


def _turn(bot, *, userid: str, at: dt.datetime, seconds: float | None = None, **fields) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(
        bot=bot, chat_type="single", userid=userid, defaults={"last_turn_at": at}
    )
    number = Turn.objects.count()
    values = {
        "bot": bot,
        "conversation": conversation,
        "msgid": f"m-{number}",
        "stream_id": f"s-{number}",
        "question": "q",
        "received_at": at,
        "status": Turn.Status.ANSWERED,
    }
    if seconds is not None:
        values |= {
            "first_token_at": at + dt.timedelta(seconds=seconds / 4),
            "finished_at": at + dt.timedelta(seconds=seconds),
            "queued_at": at,
            "claimed_at": at + dt.timedelta(seconds=seconds / 10),
        }
    return Turn.objects.create(**(values | fields))


@pytest.fixture
def hour() -> dt.datetime:
    return timezone.now().replace(minute=0, second=0, microsecond=0)


def _recompute(hour: dt.datetime) -> int:
    """The beat task's recomputation as if run at half past `hour` (turns the tests place a
    minute or two into the hour must be in the past even in the hour's first minutes)."""
    return rollup_recent(now=hour + dt.timedelta(minutes=30))


def test_the_hourly_summary_counts_exactly_what_the_turns_say(make_bot, hour):
    hr, it = make_bot(), make_bot(slug="it", name="IT")
    at = hour + dt.timedelta(minutes=1)
    for number in range(4):
        feedback = Turn.Feedback.ACCURATE if number else Turn.Feedback.INACCURATE
        _turn(hr, userid=f"u{number % 2}", at=at, seconds=2 + number, completion_tokens=10,
              prompt_tokens=30, feedback=feedback,
              sources=[{"document": 1}] if number < 3 else [])  # fmt: skip
    _turn(hr, userid="u9", at=at, status=Turn.Status.FAILED, error="worker lost")
    _turn(hr, userid="u9", at=at, status=Turn.Status.REJECTED, rejection_reason="not_allowed",
          filter_decisions=[{"subject": "question", "action": "block", "matches": []}])  # fmt: skip
    _turn(hr, userid="u8", at=at, seconds=1, longconn_req_id="req-1", channel=Turn.Channel.LONGCONN,
          filter_decisions=[{"subject": "answer", "action": "mask",
                             "matches": [{"action": "flag"}, {"action": "mask"}]}])  # fmt: skip
    _turn(it, userid="u1", at=at - dt.timedelta(hours=1), seconds=3)  # the hour before
    _turn(hr, userid="admin", at=at, seconds=2, is_test=True)  # the admin's test chat: left out

    _recompute(hour)
    _recompute(hour)  # idempotent: recomputed, not added

    rows = {(r.bot.slug, r.channel, r.hour): r for r in TurnRollup.objects.select_related("bot")}
    assert set(rows) == {
        ("hr", "callback", hour),
        ("hr", "longconn", hour),
        ("it", "callback", hour - dt.timedelta(hours=1)),
    }
    callback = rows[("hr", "callback", hour)]
    assert (callback.questions, callback.users, callback.answered) == (6, 3, 4)
    assert (callback.failed, callback.rejected, callback.blocked) == (1, 1, 1)
    assert callback.failure_reasons == {"failed:worker lost": 1, "rejected:not_allowed": 1}
    assert (callback.feedback_up, callback.feedback_down, callback.with_sources) == (3, 1, 3)
    assert (callback.completion_tokens, callback.prompt_tokens) == (40, 120)
    assert sum(callback.total_histogram) == 4 and sum(callback.first_token_histogram) == 4
    assert callback.decode_seconds == pytest.approx(sum(0.75 * (2 + n) for n in range(4)))
    longconn = rows[("hr", "longconn", hour)]
    assert (longconn.questions, longconn.masked, longconn.flagged, longconn.blocked) == (1, 1, 1, 0)


def test_a_late_end_is_counted_when_its_hour_is_recomputed(make_bot, hour):
    bot = make_bot()
    turn = _turn(bot, userid="u", at=hour + dt.timedelta(minutes=2), status=Turn.Status.QUEUED)
    _recompute(hour)
    assert TurnRollup.objects.get().answered == 0
    Turn.objects.filter(pk=turn.pk).update(
        status=Turn.Status.ANSWERED, finished_at=timezone.now() + dt.timedelta(seconds=5)
    )
    _recompute(hour)
    assert TurnRollup.objects.get().answered == 1


def test_percentiles_come_from_the_merged_histograms():
    histogram = [0] * (len(LATENCY_EDGES) + 1)
    histogram[3] = 100  # all between 2 and 3 seconds
    assert percentile(histogram, 0.5) == pytest.approx(2.5)
    assert 2 < percentile(histogram, 0.99) <= 3
    assert percentile([0] * 17, 0.5) is None


def test_dashboard_figures_match_the_turns(make_bot, hour):
    bot = make_bot()
    at = hour + dt.timedelta(minutes=5)
    for seconds in (1.5, 2.5, 2.5, 4, 25):  # answer times
        _turn(bot, userid="u1", at=at, seconds=seconds, completion_tokens=7)
    _turn(bot, userid="u2", at=at, status=Turn.Status.FAILED, error="no worker finished\nmore")
    rollup_refresh(since=hour - dt.timedelta(hours=1), until=timezone.now() + dt.timedelta(hours=1))

    data = dashboard_data(
        DashboardQuery(
            start=timezone.now() - dt.timedelta(hours=24),
            end=timezone.now() + dt.timedelta(hours=1),
            bot_ids=(bot.pk,),
        )
    )
    totals = data["totals"]
    assert (totals["questions"], totals["answered"], totals["failed"]) == (6, 5, 1)
    assert totals["completion_tokens"] == 35
    assert totals["active_users"] == 2
    # The median answer time (2.5 s) lies in the 2–3 s bucket; p99 in the 20–30 s one.
    assert 2 <= data["latency"]["total"]["p50"] <= 3
    assert 20 <= data["latency"]["total"]["p99"] <= 30
    assert data["failures"] == [{"status": "failed", "reason": "no worker finished", "count": 1}]
    assert data["bucket"] == "hour" and data["series"][-1]["questions"] == 6


# --- the page -----------------------------------------------------------------------------------


def _viewer(**fields) -> Client:
    user = User.objects.create_user("viewer", password="pw-12345678", is_staff=True, **fields)
    user.user_permissions.add(Permission.objects.get(codename="view_dashboard"))
    client = Client()
    client.force_login(user)
    return client


def test_anonymous_visitors_are_sent_to_sign_in(client):
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_without_the_permission_get_the_plain_index(django_user_model, make_bot):
    user = django_user_model.objects.create_user("clerk", password="pw-12345678", is_staff=True)
    client = Client()
    client.force_login(user)
    page = client.get("/admin/").content.decode()
    assert "dashboard-heading" not in page and "chart.umd.min.js" not in page


def test_a_viewer_sees_the_dashboard_with_its_figures(make_bot, hour):
    bot = make_bot()
    _turn(bot, userid="u1", at=hour + dt.timedelta(minutes=1), seconds=2)
    _recompute(hour)
    page = _viewer().get("/admin/?period=7d", HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert 'id="dashboard-heading">仪表盘<' in page
    assert "vendor/chartjs/chart.umd.min.js" in page and "cdn" not in page.lower()
    series = json.loads(
        page.split('id="dashboard-series" type="application/json">')[1].split("<")[0]
    )
    assert sum(point["questions"] for point in series) == 1
    assert 'id="card-questions">1<' in page


def test_bad_filters_are_ignored_with_a_note(make_bot):
    make_bot()
    page = _viewer().get("/admin/?period=1y&bot=999999&channel=fax").content.decode()
    assert "errornote" in page and "dashboard-heading" in page


def test_the_rollup_command_fills_the_history(make_bot, hour):
    bot = make_bot()
    _turn(bot, userid="u", at=hour - dt.timedelta(days=3), seconds=2)
    call_command("dashboard_rollup", "--days", "5")
    row = TurnRollup.objects.get()
    assert row.hour == hour - dt.timedelta(days=3) and row.answered == 1

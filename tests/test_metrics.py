"""`/metrics`: who may scrape it, and figures that match the turns exactly.

Process-side counters are read from this process's registry (the fast lane runs without
a multiprocess directory); the slow test at the end starts real workers that write to a
shared directory and checks the merged figures against the turns' rows.
"""

from __future__ import annotations

import datetime as dt
import os

import pytest
from django.db.models import Sum
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from apps.audit.models import ArchiveSource
from apps.bots.models import Conversation, Turn
from apps.bots.services import receive
from apps.knowledge.models import Document, KnowledgeBase
from tests.conftest import turn_terminal
from wecom.messages import InboundMessage

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture
def scrape(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []
    settings.METRICS_MULTIPROC_DIR = ""

    def get() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.content.decode())
            for sample in family.samples
        }

    return get


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _turn(bot, *, msgid: str, **fields) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(bot=bot, chat_type="single", userid="u1")
    values = {
        "bot": bot,
        "conversation": conversation,
        "msgid": msgid,
        "stream_id": f"s-{msgid}",
        "question": "年假怎么算？",
        "received_at": timezone.now() - dt.timedelta(seconds=3),
    }
    return Turn.objects.create(**(values | fields))


# --- who may scrape ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"HTTP_AUTHORIZATION": "Bearer wrong"},
        {"HTTP_AUTHORIZATION": f"Basic {TOKEN}"},
        {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}x"},
        {"HTTP_AUTHORIZATION": "Bearer "},
    ],
)
def test_metrics_refuse_a_missing_or_wrong_token(settings, headers):
    settings.METRICS_TOKEN = TOKEN
    response = Client().get("/metrics", **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"wecomai_" not in response.content


def test_metrics_take_no_token_from_the_query_string(settings):
    settings.METRICS_TOKEN = TOKEN
    assert Client().get(f"/metrics?token={TOKEN}").status_code == 401


def test_metrics_are_closed_to_everyone_when_nothing_is_configured(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = []
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_an_allowed_network_scrapes_without_a_token_and_a_forged_header_does_not(settings):
    import ipaddress

    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.1.0.0/16")]
    settings.TRUSTED_PROXY_COUNT = 0
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
    forged = Client(REMOTE_ADDR="192.0.2.7", HTTP_X_FORWARDED_FOR="10.1.2.3")
    assert forged.get("/metrics").status_code == 403


def test_metrics_answer_only_get(settings):
    settings.METRICS_TOKEN = TOKEN
    response = Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405


@pytest.mark.slow  # settings are imported in a child interpreter
def test_bad_allowed_networks_stop_the_settings_with_a_clear_error():
    import subprocess
    import sys

    env = os.environ | {"METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,not-a-network"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env | {"DJANGO_SETTINGS_MODULE": "wecom_ai.settings"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "METRICS_ALLOWED_NETWORKS must list networks" in result.stderr


# --- figures from the process: each turn's one end --------------------------------------------


def test_each_end_is_counted_once_with_its_outcome_and_tokens(make_bot):
    bot = make_bot(slug="metrics-ends")
    model = bot.model_profile.name

    def figures() -> tuple[float, float, float, float]:
        ended = "wecomai_turns_ended_total"
        return (
            _sample(ended, bot=bot.slug, channel="callback", outcome="answered", reason="stop"),
            _sample(ended, bot=bot.slug, channel="callback", outcome="failed", reason=""),
            _sample("wecomai_tokens_generated_total", bot=bot.slug, model=model),
            _sample("wecomai_time_to_first_token_seconds_count", bot=bot.slug, model=model),
        )

    before = figures()
    answered = _turn(bot, msgid="m-answered", queued_at=timezone.now())
    assert answered.claim(lease=dt.timedelta(seconds=30))
    assert answered.first_token()
    answered.completion_tokens, answered.prompt_tokens, answered.finish_reason = 17, 40, "stop"
    assert answered.finish(answer="五天。", reasoning="")
    # A late second end (the sweeper after the worker) loses and is not counted.
    assert not Turn.objects.get(pk=answered.pk).fail(error="late")
    failed = _turn(bot, msgid="m-failed", queued_at=timezone.now())
    assert failed.claim(lease=dt.timedelta(seconds=30))
    assert failed.fail(error="worker lost")

    after = figures()
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 17, 1]


def test_a_rejected_question_is_counted_with_its_reason(make_bot):
    bot = make_bot(slug="metrics-rejected", allowed_userids=["someone-else"])
    labels = {
        "bot": bot.slug,
        "channel": "callback",
        "outcome": "rejected",
        "reason": "not_allowed",
    }
    before = _sample("wecomai_turns_ended_total", **labels)
    message = InboundMessage(
        msgid="m-rej", aibotid="", chatid=None, chattype="single", userid="u1",
        response_url=None, msgtype="text", text="年假怎么算？", image_urls=(), quote=None, raw={},
    )  # fmt: skip
    turn = receive.mention_receive(bot=bot, message=message, received_at=timezone.now())
    assert turn.status == Turn.Status.REJECTED
    assert _sample("wecomai_turns_ended_total", **labels) == before + 1


def test_a_rolled_back_end_is_not_counted(make_bot):
    from django.db import transaction

    bot = make_bot(slug="metrics-rollback")
    turn = _turn(bot, msgid="m-rb", queued_at=timezone.now())
    assert turn.claim(lease=dt.timedelta(seconds=30))
    labels = {"bot": bot.slug, "channel": "callback", "outcome": "failed", "reason": ""}
    before = _sample("wecomai_turns_ended_total", **labels)
    with pytest.raises(RuntimeError), transaction.atomic():
        assert turn.fail(error="x")
        raise RuntimeError("the surrounding work failed")
    assert _sample("wecomai_turns_ended_total", **labels) == before
    assert Turn.objects.get(pk=turn.pk).status == Turn.Status.GENERATING


def test_request_latency_is_observed_per_url_name(bot):
    labels = {"route": "bots:callback", "method": "GET", "status": "403"}
    before = _sample("wecomai_http_request_duration_seconds_count", **labels)
    response = Client().get(
        f"/wecom/aibot/{bot.slug}/callback",
        {"msg_signature": "0" * 40, "timestamp": "1", "nonce": "2", "echostr": "x"},
    )
    assert str(response.status_code) == labels["status"]
    assert _sample("wecomai_http_request_duration_seconds_count", **labels) == before + 1
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    before = _sample("wecomai_http_request_duration_seconds_count", **unmatched)
    Client().get("/no/such/page/12345")
    assert _sample("wecomai_http_request_duration_seconds_count", **unmatched) == before + 1


# --- figures from the database, read at scrape time -------------------------------------------


def test_database_state_matches_the_rows(make_bot, scrape):
    bot = make_bot(slug="metrics-state")
    model = bot.model_profile.name
    for number in range(3):
        _turn(bot, msgid=f"q-{number}", queued_at=timezone.now())
    _turn(bot, msgid="g-1", status=Turn.Status.GENERATING, attempts=1)
    _turn(bot, msgid="done", status=Turn.Status.ANSWERED, finished_at=timezone.now())
    kb = KnowledgeBase.objects.create(name="HR", slug="hr-metrics")
    Document.objects.create(
        kb=kb, original_filename="a.pdf", title="a", status=Document.Status.FAILED
    )
    ArchiveSource.objects.create(name="corp-archive", corp_id="ww1", secret="s")

    samples = scrape()

    assert samples[("wecomai_turns_open", (("bot", bot.slug), ("status", "queued")))] == 3
    assert samples[("wecomai_turns_open", (("bot", bot.slug), ("status", "generating")))] == 1
    assert ("wecomai_turns_open", (("bot", bot.slug), ("status", "answered"))) not in samples
    assert samples[("wecomai_queue_depth", (("model", model),))] == 3
    assert 2.5 <= samples[("wecomai_queue_oldest_seconds", (("model", model),))] < 60
    assert samples[("wecomai_engine_slots_busy", (("model", model),))] == 1
    assert samples[("wecomai_engine_slots", (("model", model),))] == bot.model_profile.slots
    assert samples[("wecomai_documents", (("status", "failed"),))] == 1
    assert samples[("wecomai_documents", (("status", "ready"),))] == 0
    never = samples[("wecomai_archive_last_success_age_seconds", (("source", "corp-archive"),))]
    assert never == float("inf")  # never pulled: the alert must see it


def test_the_ledger_head_age_follows_the_newest_entry(make_bot, scrape):
    bot = make_bot(slug="metrics-ledger", allowed_userids=["someone-else"])
    assert ("wecomai_ledger_head_age_seconds", ()) not in scrape()
    message = InboundMessage(
        msgid="m-led", aibotid="", chatid=None, chattype="single", userid="u1",
        response_url=None, msgtype="text", text="hi", image_urls=(), quote=None, raw={},
    )  # fmt: skip
    receive.mention_receive(bot=bot, message=message, received_at=timezone.now())  # one entry
    assert 0 <= scrape()[("wecomai_ledger_head_age_seconds", ())] < 30


# --- several processes: real workers writing to one directory ---------------------------------


@pytest.mark.slow
def test_figures_from_two_worker_processes_match_the_turns(
    make_bot, simulator_for, start_worker, settings, tmp_path
):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    bot = make_bot(slug="metrics-e2e")
    sim = simulator_for(bot)
    results = []
    # One worker answers two questions and stops; a second answers two more. The first
    # one's samples stay in its file (counters outlive their process) and are merged.
    for first in (0, 2):
        worker = start_worker(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
        for number in (first, first + 1):
            results.append(sim.ask(f"@HR助手 question {number}", userid=f"u{number}", timeout=120))
        worker.stop()
    assert all(result.finished for result in results)
    turns = [turn_terminal(result.msgid) for result in results]
    assert {turn.status for turn in turns} == {Turn.Status.ANSWERED}

    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_MULTIPROC_DIR = str(metrics_dir)
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
    assert len(list(metrics_dir.glob("*.db"))) >= 2  # one file per process, at least
    ended = sum(
        value
        for (name, labels), value in samples.items()
        if name == "wecomai_turns_ended_total" and ("bot", bot.slug) in labels
    )
    assert ended == len(turns)
    model = bot.model_profile.name
    tokens = Turn.objects.filter(bot=bot).aggregate(total=Sum("completion_tokens"))["total"]
    key = (("bot", bot.slug), ("model", model))
    assert samples[("wecomai_tokens_generated_total", key)] == tokens
    assert samples[("wecomai_time_to_first_token_seconds_count", key)] == len(turns)
    assert samples[("wecomai_queue_wait_seconds_count", (("model", model),))] == len(turns)
    # The dashboard reads the same turns through its hourly summaries: counts match exactly
    # and the median answer time lies in the histogram bucket of the true median.
    from apps.monitoring.models import LATENCY_EDGES
    from apps.monitoring.selectors import DashboardQuery, dashboard_data
    from apps.monitoring.services.rollup import rollup_recent

    rollup_recent()
    data = dashboard_data(
        DashboardQuery(
            start=timezone.now() - dt.timedelta(hours=1),
            end=timezone.now() + dt.timedelta(minutes=1),
            bot_ids=(bot.pk,),
        )
    )
    assert (data["totals"]["questions"], data["totals"]["answered"]) == (4, 4)
    assert data["totals"]["completion_tokens"] == tokens
    seconds = sorted((turn.finished_at - turn.received_at).total_seconds() for turn in turns)
    edges = (0.0, *LATENCY_EDGES, float("inf"))

    def bucket(value: float) -> int:
        return next(i for i, edge in enumerate(LATENCY_EDGES) if value < edge)

    # Four answers: the median lies between the second and third, bucket-wise.
    low, high = bucket(seconds[1]), bucket(seconds[2])
    assert edges[low] <= data["latency"]["total"]["p50"] <= edges[high + 1]


def test_a_metrics_failure_never_costs_the_turn(make_bot, monkeypatch, caplog):
    from apps.core import metrics

    def broken(*labels: str) -> None:
        raise OSError("metrics directory unwritable")

    bot = make_bot(slug="metrics-broken")
    turn = _turn(bot, msgid="m-broken", queued_at=timezone.now())
    assert turn.claim(lease=dt.timedelta(seconds=30))
    monkeypatch.setattr(metrics.TURNS_ENDED, "labels", broken)
    assert turn.finish(answer="五天。", reasoning="")
    assert Turn.objects.get(pk=turn.pk).status == Turn.Status.ANSWERED
    assert "metrics for turn" in caplog.text


def test_the_grafana_dashboard_uses_only_metrics_the_product_exports(make_bot, scrape):
    import json
    import re

    from tests.conftest import BASE_DIR

    # Every family appears once something was counted: end one turn, request one page.
    bot = make_bot(slug="metrics-dashboard")
    turn = _turn(bot, msgid="m-dash", queued_at=timezone.now())
    assert turn.claim(lease=dt.timedelta(seconds=30)) and turn.first_token()
    turn.completion_tokens = 3
    assert turn.finish(answer="a", reasoning="")
    Client().get(f"/wecom/aibot/{bot.slug}/callback")
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    families = list(text_string_to_metric_families(response.content.decode()))
    exported = {family.name for family in families}
    exported |= {sample.name for family in families for sample in family.samples}
    exported |= {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in exported}

    dashboard = json.loads((BASE_DIR / "deploy/grafana/wecom-ai.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bwecomai_[a-z_]+", expr)}
    assert used and used - exported - {f"{name}_bucket" for name in exported} == set()

"""State read from the database at scrape time: right however many processes and hosts run.

Each query is a small aggregate over an indexed column (open turns by status, newest
ledger entry by sequence), so a scrape stays cheap with millions of turns.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.db.models import Count, Max, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from apps.audit.models import ArchiveSource, LedgerCheckpoint, LedgerEntry
from apps.bots.models import LongConnection, Turn
from apps.inference.models import ModelProfile
from apps.knowledge.models import Document


def _age(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max((now - then).total_seconds(), 0.0)


class DatabaseCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        yield from self._turns(now)
        yield from self._engines()
        yield self._documents()
        yield from self._archive(now)
        yield from self._ledger(now)
        yield self._long_connections()

    def _turns(self, now: datetime) -> Iterator[Metric]:
        open_turns = GaugeMetricFamily(
            "wecomai_turns_open", "Turns not ended yet, by bot and state", labels=["bot", "status"]
        )
        rows = (
            Turn.objects.filter(status__in=Turn.OPEN)
            .values("bot__slug", "status")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in rows:
            open_turns.add_metric([row["bot__slug"], row["status"]], row["n"])
        yield open_turns
        depth = GaugeMetricFamily(
            "wecomai_queue_depth", "Turns waiting for a worker, by model profile", labels=["model"]
        )
        oldest = GaugeMetricFamily(
            "wecomai_queue_oldest_seconds",
            "Age of the oldest turn waiting for a worker, by model profile",
            labels=["model"],
        )
        waiting = (
            Turn.objects.filter(status=Turn.Status.QUEUED)
            .values("bot__model_profile__name")
            .annotate(n=Count("id"), first=Min("received_at"))
            .order_by()
        )
        for row in waiting:
            model = row["bot__model_profile__name"]
            depth.add_metric([model], row["n"])
            oldest.add_metric([model], _age(now, row["first"]) or 0.0)
        yield depth
        yield oldest

    def _engines(self) -> Iterator[Metric]:
        slots = GaugeMetricFamily(
            "wecomai_engine_slots", "Decode slots each model profile offers", labels=["model"]
        )
        busy = GaugeMetricFamily(
            "wecomai_engine_slots_busy",
            "Turns held by a worker (decoding, or waiting for a slot), by model profile",
            labels=["model"],
        )
        generating = dict(
            Turn.objects.filter(status=Turn.Status.GENERATING)
            .values_list("bot__model_profile__name")
            .annotate(n=Count("id"))
            .order_by()
        )
        for name, capacity in ModelProfile.objects.values_list("name", "slots"):
            slots.add_metric([name], capacity)
            busy.add_metric([name], generating.get(name, 0))
        yield slots
        yield busy

    def _documents(self) -> Metric:
        documents = GaugeMetricFamily(
            "wecomai_documents", "Knowledge documents by ingestion status", labels=["status"]
        )
        counts = dict(Document.objects.values_list("status").annotate(n=Count("id")).order_by())
        for status in Document.Status.values:
            documents.add_metric([status], counts.get(status, 0))
        return documents

    def _archive(self, now: datetime) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "wecomai_archive_last_success_age_seconds",
            "Time since each enabled session-archive source last pulled successfully "
            "(WeCom keeps messages for 5 days)",
            labels=["source"],
        )
        for name, last in ArchiveSource.objects.filter(enabled=True).values_list(
            "name", "last_success_at"
        ):
            age = _age(now, last)
            lag.add_metric([name], float("inf") if age is None else age)
        yield lag

    def _ledger(self, now: datetime) -> Iterator[Metric]:
        head = LedgerEntry.objects.order_by("-seq").values_list("created_at", flat=True).first()
        checkpoint = LedgerCheckpoint.objects.aggregate(last=Max("created_at"))["last"]
        for name, doc, then in (
            ("wecomai_ledger_head_age_seconds", "Age of the newest ledger entry", head),
            ("wecomai_ledger_checkpoint_age_seconds", "Age of the last checkpoint", checkpoint),
        ):
            family = GaugeMetricFamily(name, doc)
            age = _age(now, then)
            if age is not None:
                family.add_metric([], age)
            yield family

    def _long_connections(self) -> Metric:
        connected = GaugeMetricFamily(
            "wecomai_longconn_connected",
            "1 while a long-connection bot's connection is up",
            labels=["bot"],
        )
        for slug, phase in LongConnection.objects.values_list("bot__slug", "phase"):
            connected.add_metric([slug], 1.0 if phase == "connected" else 0.0)
        return connected

"""What request metrics cost on the callback path: the same requests with and without them.

One process, one Django, two middleware chains: the product's (with the request-latency
middleware writing to a multiprocess directory, as `make run` and compose configure it)
and the same chain without it. Requests alternate between the chains in ABBA rounds, so
drift hits both alike; each kind is a real request through Django's handler (no socket,
which only adds the same constant to both): a full callback acknowledgement (signature,
decrypt, turn insert, Redis stream state, enqueue, encrypted reply) and `/healthz`.

    .venv/bin/python bench/metrics_cost.py [--requests 1200] [--rounds 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Before anything imports prometheus_client: it picks its storage at import.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="wecomai-metrics-"))

from bench.callback import _Workload
from bench.stack import BenchStack

METRICS_MIDDLEWARE = "apps.monitoring.middleware.RequestMetricsMiddleware"


def _clients() -> dict[str, Any]:
    from django.conf import settings
    from django.test import Client, override_settings

    with_metrics = Client()
    with_metrics.get("/healthz")  # builds this client's middleware chain now
    without = [name for name in settings.MIDDLEWARE if name != METRICS_MIDDLEWARE]
    assert len(without) == len(settings.MIDDLEWARE) - 1
    with override_settings(MIDDLEWARE=without):
        without_metrics = Client()
        without_metrics.get("/healthz")  # ... and this one's, without the metrics
    return {"with metrics": with_metrics, "without": without_metrics}


def _send(client: Any, kind: str, workload: _Workload, count: int) -> list[float]:
    if kind == "healthz":
        requests = [("/healthz", b"")] * count
    else:
        requests = [
            (f"{request.url.raw_path.decode()}", request.content)
            for request in workload.build("callback", count)
        ]
    seconds = []
    for path, body in requests:
        started = time.perf_counter()
        if body:
            response = client.post(path, data=body, content_type="application/json")
        else:
            response = client.get(path)
        seconds.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"{kind}: HTTP {response.status_code} for {path}")
    return seconds


def run(*, requests: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = {}
    with BenchStack(with_inference_worker=False) as stack:
        workload = _Workload(stack)
        clients = _clients()
        per_round = max(1, requests // rounds)
        for kind in ("callback", "healthz"):
            samples[kind] = {name: [] for name in clients}
            for client in clients.values():
                _send(client, kind, workload, min(100, per_round))  # warm-up
            for index in range(rounds):
                order = list(clients) if index % 2 == 0 else list(reversed(clients))
                for name in order:
                    samples[kind][name] += _send(clients[name], kind, workload, per_round)
    return samples


def observe_microseconds(count: int = 20_000) -> float:
    """One request's whole metrics cost: a labelled histogram observation in the mmap file."""
    from apps.core.metrics import HTTP_REQUEST_SECONDS

    started = time.perf_counter()
    for _ in range(count):
        HTTP_REQUEST_SECONDS.labels("bench:observe", "POST", "200").observe(0.01)
    return (time.perf_counter() - started) / count * 1e6


def render(samples: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        f"one observation in the multiprocess directory: {observe_microseconds():.1f} µs",
        "",
        f"{'':<26}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}",
    ]
    for kind, variants in samples.items():
        for name, seconds in variants.items():
            ordered = sorted(seconds)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            lines.append(
                f"{kind + ' ' + name:<26}{len(seconds):>9}"
                f"{statistics.median(seconds) * 1000:>9.3f}{p99 * 1000:>9.3f}"
                f"{statistics.fmean(seconds) * 1000:>9.3f}"
            )
        with_p50 = statistics.median(variants["with metrics"])
        without_p50 = statistics.median(variants["without"])
        lines.append(f"{kind}: with/without metrics p50 {with_p50 / without_p50:.3f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1200, help="per kind and variant")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds")
    args = parser.parse_args(argv)
    print(render(run(requests=args.requests, rounds=args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

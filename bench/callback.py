"""Callback acknowledgement latency under concurrent load, next to a plain Django page.

Each callback is a new encrypted @-mention built by the project's WeCom simulator, so the
server does the whole acknowledgement path (signature, decrypt, turn insert, Redis stream
state, Celery enqueue, encrypted reply). `/healthz` on the same server in the same run is
the baseline: the ratio says what the callback path costs over Django's own floor.

    .venv/bin/python bench/callback.py [--concurrency 16] [--requests 1500] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.stack import BenchStack

USERS = 64  # senders rotate over these, in CHATS group chats, like a busy company bot
CHATS = 4
MAX_ERRORS_SHOWN = 5


@dataclass
class Sample:
    seconds: float
    response: httpx.Response | None
    error: str = ""


@dataclass
class Phase:
    """All requests of one kind, over every round, with the wall time they took."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    wall_seconds: float = 0.0
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failures += 1
        if len(self.errors) < MAX_ERRORS_SHOWN:
            self.errors.append(message)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(sample.seconds for sample in self.samples)
        return {
            "requests": len(latencies),
            "p50_ms": _percentile(latencies, 50) * 1000,
            "p95_ms": _percentile(latencies, 95) * 1000,
            "p99_ms": _percentile(latencies, 99) * 1000,
            "max_ms": latencies[-1] * 1000 if latencies else math.nan,
            "throughput_rps": len(latencies) / self.wall_seconds if self.wall_seconds else math.nan,
            "failures": self.failures,
        }


def _percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return math.nan
    rank = max(1, math.ceil(percent / 100 * len(values)))
    return values[rank - 1]


class _RequestRecorder:
    """Stands in for the simulator's HTTP client: `post` returns the request it would send.

    This keeps the simulator's exact encoding (encrypt, sign, query string) while the
    benchmark sends the requests itself with an async client.
    """

    def post(self, url: str, *, params: dict[str, str], json: dict[str, Any]) -> httpx.Request:
        return httpx.Request("POST", url, params=params, json=json)


async def _send_all(
    client: httpx.AsyncClient, requests: list[httpx.Request], concurrency: int
) -> tuple[list[Sample], float]:
    """Send requests with `concurrency` connections busy at all times; latency per request."""
    samples: list[Sample] = []
    pending = iter(requests)

    async def lane() -> None:
        for request in pending:
            started = time.perf_counter()
            try:
                response = await client.send(request)
            except httpx.HTTPError as exc:
                samples.append(Sample(time.perf_counter() - started, None, repr(exc)))
                continue
            samples.append(Sample(time.perf_counter() - started, response))

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


def _check_callback(simulator: Any) -> Callable[[Sample], str]:
    def check(sample: Sample) -> str:
        if sample.response is None:
            return sample.error
        if sample.response.status_code != 200:
            return f"HTTP {sample.response.status_code}: {sample.response.text[:80]!r}"
        try:
            reply = simulator.decrypt_reply(sample.response)
        except Exception as exc:
            return f"reply does not verify: {exc!r}"
        stream = (reply or {}).get("stream")
        if (reply or {}).get("msgtype") != "stream" or not isinstance(stream, dict):
            return f"not a stream reply: {reply!r}"[:200]
        if not stream.get("id"):
            return "stream reply without an id"
        return ""

    return check


def _check_plain(sample: Sample) -> str:
    if sample.response is None:
        return sample.error
    if sample.response.status_code != 200 or sample.response.text != "ok":
        return f"HTTP {sample.response.status_code}: {sample.response.text[:80]!r}"
    return ""


def _verify(phase: Phase, samples: list[Sample], check: Callable[[Sample], str]) -> None:
    for sample in samples:
        if problem := check(sample):
            phase.fail(problem)


class _Workload:
    """Builds the requests of each kind; callbacks are fresh @-mentions with unique msgids."""

    def __init__(self, stack: BenchStack) -> None:
        self.base_url = stack.base_url
        self.simulator = stack.simulator(client=_RequestRecorder())
        self.sent = 0

    def build(self, kind: str, count: int) -> list[httpx.Request]:
        if kind == "plain":
            return [httpx.Request("GET", f"{self.base_url}/healthz") for _ in range(count)]
        built = []
        for _ in range(count):
            message = self.simulator.text_message(
                f"第{self.sent}个问题: how many vacation days do I have left?",
                userid=f"bench-user-{self.sent % USERS}",
                chatid=f"bench-chat-{self.sent % CHATS}",
            )
            built.append(self.simulator.post_message(message))
            self.sent += 1
        return built

    def check(self, kind: str) -> Callable[[Sample], str]:
        return _check_plain if kind == "plain" else _check_callback(self.simulator)


async def measure(
    workload: _Workload, *, concurrency: int, requests: int, rounds: int, warmup: int
) -> dict[str, Phase]:
    """Warm up, then alternate callback and plain batches; verify every answer after its batch."""
    phases = {"callback": Phase("callback"), "plain": Phase("plain")}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30.0, trust_env=False, limits=limits) as client:
        for kind in phases:
            samples, _wall = await _send_all(client, workload.build(kind, warmup), concurrency)
            _verify(phases[kind], samples, workload.check(kind))
        per_round = [requests // rounds + (i < requests % rounds) for i in range(rounds)]
        for index, count in enumerate(per_round):
            # ABBA order, so slow drift (caches, autovacuum, neighbours) hits both alike.
            order = ("callback", "plain") if index % 2 == 0 else ("plain", "callback")
            for kind in order:
                batch = workload.build(kind, count)  # encrypted before the clock starts
                samples, wall = await _send_all(client, batch, concurrency)
                phases[kind].samples.extend(samples)
                phases[kind].wall_seconds += wall
                _verify(phases[kind], samples, workload.check(kind))
    return phases


def run(*, concurrency: int, requests: int, rounds: int, warmup: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    with BenchStack(with_inference_worker=False) as stack:
        phases = asyncio.run(
            measure(
                _Workload(stack),
                concurrency=concurrency,
                requests=requests,
                rounds=rounds,
                warmup=warmup,
            )
        )
    callback, plain = phases["callback"].summary(), phases["plain"].summary()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "rounds": rounds,
        "warmup": warmup,
        "callback": callback,
        "plain": plain,
        "ratio_p50": callback["p50_ms"] / plain["p50_ms"],
        "ratio_p99": callback["p99_ms"] / plain["p99_ms"],
        "errors": {kind: phase.errors for kind, phase in phases.items()},
        "load_average": [load_before, os.getloadavg()[0]],
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"Callback acknowledgement vs plain page: concurrency {result['concurrency']}, "
        f"{result['requests']} requests each in {result['rounds']} alternating rounds "
        f"(after {result['warmup']} warm-up requests each)",
        "",
        f"{'':<22}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'req/s':>9}{'failures':>10}",
    ]
    for label, key in (("callback (POST)", "callback"), ("plain page /healthz", "plain")):
        row = result[key]
        lines.append(
            f"{label:<22}{row['requests']:>9}{row['p50_ms']:>9.2f}{row['p95_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{row['max_ms']:>9.2f}{row['throughput_rps']:>9.1f}"
            f"{row['failures']:>10}"
        )
    lines += [
        "",
        f"ratio callback/plain: p50 {result['ratio_p50']:.2f}x, p99 {result['ratio_p99']:.2f}x",
        "1-minute load average before/after: {:.2f} / {:.2f} (compare runs by the ratios)".format(
            *result["load_average"]
        ),
    ]
    for key, errors in result["errors"].items():
        lines += [f"{key} failure: {error}" for error in errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--requests", type=int, default=1500, help="measured requests per kind")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per kind")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per kind")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.warmup < 0:
        parser.error("--concurrency and --requests must be positive, --warmup not negative")
    rounds = max(1, min(args.rounds, args.requests))
    result = run(
        concurrency=args.concurrency, requests=args.requests, rounds=rounds, warmup=args.warmup
    )
    print(json.dumps(result, indent=2) if args.json else render(result))
    failed = result["callback"]["failures"] + result["plain"]["failures"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

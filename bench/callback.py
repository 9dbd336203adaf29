"""Callback acknowledgement latency under concurrent load, next to a plain Django page.

Each callback is a new encrypted @-mention built by the project's WeCom simulator, so the
server does the whole acknowledgement path (signature, decrypt, turn insert, Redis stream
state, Celery enqueue, encrypted reply). `/healthz` on the same server in the same run is
the baseline: the ratio says what the callback path costs over Django's own floor.

Scenarios (`--scenarios`, comma-separated; each web configuration of `--web` runs them all
on a server of its own, so the configurations are compared in one run):

- `plain`: callbacks against `/healthz`, alternating batches (the original figure).
- `mixed`: rounds of @-mentions while the inference worker generates earlier answers and
  the simulator refreshes their streams, with the admin login page loaded in the same
  window: ack, refresh and admin latency side by side.
- `burst`: `--burst` mentions sent at once; how many are acknowledged within WeCom's 5 s.
- `sustained`: `--sustained` mentions at `--concurrency`; acknowledgements per second.
- `profile`: one ack at a time in this process (no HTTP), timed and under cProfile: what
  a single acknowledgement spends on crypto, the insert, the enqueue and Redis.

    .venv/bin/python bench/callback.py [--concurrency 16] [--requests 1500] [--json]
    .venv/bin/python bench/callback.py --scenarios mixed,burst,sustained,profile \
        --web sync:1,async:1,async:2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
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

# Every mention comes from another employee (a user with three unanswered questions is
# refused at once, which would measure the refusal instead of the turn), in CHATS chats.
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
        self.admin_url = stack.base_url + ADMIN_PATH  # another server's when the admin is apart
        self.simulator = stack.simulator(client=_RequestRecorder())
        self.sent = 0

    def build(self, kind: str, count: int) -> list[httpx.Request]:
        if kind == "plain":
            return [httpx.Request("GET", f"{self.base_url}/healthz") for _ in range(count)]
        return [self.mention()[0] for _ in range(count)]

    def mention(self) -> tuple[httpx.Request, str, str]:
        """A new @-mention's request, with its sender and chat (a refresh names them too)."""
        userid, chatid = f"bench-user-{self.sent}", f"bench-chat-{self.sent % CHATS}"
        message = self.simulator.text_message(
            f"第{self.sent}个问题: how many vacation days do I have left?",
            userid=userid,
            chatid=chatid,
        )
        self.sent += 1
        return self.simulator.post_message(message), userid, chatid

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


WECOM_ACK_SECONDS = 5.0  # WeCom gives up on (and retries) a callback not answered by then
ADMIN_PATH = "/admin/login/"
SCENARIOS = ("plain", "mixed", "burst", "sustained", "profile")
# DJANGO_SETTINGS_MODULE of the `sync` view variant: the callback as a plain sync view.
SYNC_VIEW_SETTINGS = "bench.sync_callback_settings"
WEB_POOL_SIZE = 8  # DATABASE_POOL_SIZE of a `pool` configuration, as the runner sets it


@dataclass(frozen=True)
class WebConfig:
    """One way to run the web tier: the callback view variant and uvicorn processes."""

    view: str  # "async" (the product's view) or "sync" (the same code as a sync view)
    workers: int
    database: str = ""  # the web's connections: "pool", or CONN_MAX_AGE seconds; "": the runner's
    admin_apart: bool = False  # the admin on a uvicorn process of its own (a second server)

    @property
    def label(self) -> str:
        label = f"{self.view} view, {self.workers} process{'es' if self.workers > 1 else ''}"
        if self.database == "pool":
            label += ", connection pool"
        elif self.database:
            label += f", CONN_MAX_AGE={self.database}"
        return label + (", admin in a process apart" if self.admin_apart else "")

    @property
    def spec(self) -> str:
        parts = [self.view, str(self.workers), self.database]
        return ":".join([*parts, "apart"]) if self.admin_apart else ":".join(filter(None, parts))

    @classmethod
    def parse(cls, text: str) -> WebConfig:
        view, workers, database, apart = [*text.split(":"), "", "", ""][:4]
        if view not in {"sync", "async"} or not workers.isdigit() or int(workers) < 1:
            raise ValueError(f"{text!r}: expected VIEW:WORKERS[:DB[:apart]], VIEW sync or async")
        if database and database != "pool" and not database.isdigit():
            raise ValueError(f"{text!r}: DB is `pool` or CONN_MAX_AGE seconds")
        if apart not in {"", "apart"}:
            raise ValueError(f"{text!r}: the fourth part is `apart` or nothing")
        return cls(view, int(workers), database, apart == "apart")


async def _timed(client: httpx.AsyncClient, request: httpx.Request) -> Sample:
    started = time.perf_counter()
    try:
        response = await client.send(request)
    except httpx.HTTPError as exc:
        return Sample(time.perf_counter() - started, None, repr(exc))
    return Sample(time.perf_counter() - started, response)


def _check_page(sample: Sample) -> str:
    if sample.response is None:
        return sample.error
    if sample.response.status_code != 200:
        return f"HTTP {sample.response.status_code}"
    return ""


def _stream_of(simulator: Any, sample: Sample) -> dict[str, Any]:
    assert sample.response is not None
    return dict((simulator.decrypt_reply(sample.response) or {}).get("stream") or {})


async def measure_mixed(
    workload: _Workload, *, mentions: int, concurrency: int, rounds: int, gap: float
) -> dict[str, Phase]:
    """Rounds of mentions while earlier answers generate and their streams are refreshed;
    the admin login page is loaded by two clients over the same window."""
    phases = {name: Phase(name) for name in ("ack", "refresh", "admin")}
    simulator = workload.simulator
    open_streams: dict[str, tuple[str, str]] = {}  # stream id -> (userid, chatid)
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30.0, trust_env=False, limits=limits) as client:

        async def admin_lane() -> None:
            while not stop.is_set():
                sample = await _timed(client, httpx.Request("GET", workload.admin_url))
                phases["admin"].samples.append(sample)
                if problem := _check_page(sample):
                    phases["admin"].fail(problem)

        async def refresh_one(stream_id: str, userid: str, chatid: str) -> None:
            message = simulator.stream_refresh_message(stream_id, userid=userid, chatid=chatid)
            sample = await _timed(client, simulator.post_message(message))
            phases["refresh"].samples.append(sample)
            try:
                stream = _stream_of(simulator, sample) if sample.response is not None else {}
            except Exception as exc:
                phases["refresh"].fail(f"refresh reply does not verify: {exc!r}")
                return
            if sample.response is None:
                phases["refresh"].fail(sample.error)
            elif stream.get("finish"):
                open_streams.pop(stream_id, None)

        async def refresher() -> None:
            # WeCom refreshes every open stream about once a second until it finishes.
            while not stop.is_set():
                await asyncio.gather(*(refresh_one(s, *who) for s, who in open_streams.items()))
                await asyncio.sleep(1.0)

        async def mention_round(measured: bool) -> None:
            senders: dict[str, tuple[str, str]] = {}  # nonce -> (userid, chatid)
            requests = []
            for _ in range(mentions):
                request, userid, chatid = workload.mention()
                senders[request.url.params["nonce"]] = (userid, chatid)
                requests.append(request)
            samples, wall = await _send_all(client, requests, concurrency)
            if measured:
                phases["ack"].samples.extend(samples)
                phases["ack"].wall_seconds += wall
            for sample in samples:
                if problem := workload.check("callback")(sample):
                    phases["ack"].fail(problem)
                    continue
                assert sample.response is not None
                stream = _stream_of(simulator, sample)
                if not stream.get("finish"):
                    nonce = sample.response.request.url.params["nonce"]
                    open_streams[stream["id"]] = senders[nonce]

        # Warm-up round: answers start generating before anything is measured.
        await mention_round(measured=False)
        background = [asyncio.create_task(admin_lane()) for _ in range(2)]
        background.append(asyncio.create_task(refresher()))
        started = time.perf_counter()
        for index in range(rounds):
            await mention_round(measured=True)
            if index < rounds - 1:
                await asyncio.sleep(gap)
        phases["admin"].wall_seconds = phases["refresh"].wall_seconds = (
            time.perf_counter() - started
        )
        stop.set()
        await asyncio.gather(*background)
    return phases


async def measure_burst(workload: _Workload, *, count: int) -> dict[str, Any]:
    """`count` mentions on `count` new connections at once, like a company-wide @-storm."""
    requests = workload.build("callback", count)
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    phase = Phase("burst")
    async with httpx.AsyncClient(timeout=30.0, trust_env=False, limits=limits) as client:
        samples, phase.wall_seconds = await _send_all(client, requests, count)
    phase.samples = samples
    check = workload.check("callback")
    in_time = 0
    for sample in samples:
        if problem := check(sample):
            phase.fail(problem)
        elif sample.seconds <= WECOM_ACK_SECONDS:
            in_time += 1
    return phase.summary() | {"sent": count, "acked_in_time": in_time, "errors": phase.errors}


async def measure_sustained(
    workload: _Workload, *, count: int, concurrency: int, warmup: int
) -> dict[str, Any]:
    """Mentions back to back at `concurrency`: the acknowledgements per second the tier holds."""
    phase = Phase("sustained")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30.0, trust_env=False, limits=limits) as client:
        await _send_all(client, workload.build("callback", warmup), concurrency)
        batch = workload.build("callback", count)
        phase.samples, phase.wall_seconds = await _send_all(client, batch, concurrency)
    _verify(phase, phase.samples, workload.check("callback"))
    return phase.summary() | {"errors": phase.errors}


# Where a profiled acknowledgement spends its time: (label, file suffix, function name);
# cumulative, so nested entries overlap their parents (the enqueue is inside the insert).
PROFILE_POINTS = (
    ("signature + decrypt", "wecom/crypto.py", "decrypt_callback"),
    ("nonce check (Redis)", "services/receive.py", "callback_nonce_remember"),
    ("turn insert + enqueue", "services/receive.py", "mention_receive"),
    ("  of which enqueue", "services/receive.py", "turn_enqueue"),
    ("stream state (Redis)", "services/stream.py", "stream_refresh_payload"),
    ("encrypt reply", "wecom/crypto.py", "encrypt_reply"),
)
# Time by layer (own time of the functions in these files or builtins).
PROFILE_LAYERS = (
    ("socket waits (PostgreSQL, Redis)", ("recv", "recv_into", "send", "sendall", "poll")),
    ("psycopg", ("psycopg/",)),
    ("redis-py", ("redis/",)),
    ("celery + kombu", ("celery/", "kombu/")),
    ("crypto (cryptography, hashlib)", ("cryptography/", "hashlib", "sha1")),
    ("django", ("django/",)),
)


def profile_ack(workload: _Workload, *, count: int) -> dict[str, Any]:
    """One acknowledgement at a time through the view in this process, timed, then profiled.

    No HTTP and no ASGI: what is left is the view's own work, whose inverse bounds the acks
    per second one core can give.
    """
    import cProfile
    import pstats

    from django.test import RequestFactory

    from apps.bots.views import callback_sync

    factory = RequestFactory()
    slug = workload.simulator.callback_url.rstrip("/").split("/")[-2]

    def calls(n: int) -> list[Any]:
        return [
            factory.post(
                request.url.raw_path.decode(), data=request.content, content_type="application/json"
            )
            for request in workload.build("callback", n)
        ]

    for request in calls(20):  # warm-up: connections, imports, caches
        callback_sync(request, slug=slug)
    batch = calls(count)
    started = time.perf_counter()
    for request in batch:
        if callback_sync(request, slug=slug).status_code != 200:
            raise RuntimeError("profiled callback did not answer 200")
    serial_ms = (time.perf_counter() - started) * 1000 / count
    profiler = cProfile.Profile()
    batch = calls(count)
    profiler.enable()
    for request in batch:
        callback_sync(request, slug=slug)
    profiler.disable()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        callback_sync(calls(1)[0], slug=slug)
    statements: dict[str, int] = {}
    for query in queries.captured_queries:
        words = query["sql"].split()
        head = " ".join(words[:1] + [w for w in words if w.startswith('"')][:1])
        statements[head] = statements.get(head, 0) + 1
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values()) * 1000 / count
    points = {}
    for label, suffix, name in PROFILE_POINTS:
        points[label] = (
            sum(
                entry[3]
                for (path, _line, function), entry in stats.items()
                if path.endswith(suffix) and function == name
            )
            * 1000
            / count
        )
    layers = dict.fromkeys((label for label, _ in PROFILE_LAYERS), 0.0)
    for (path, _line, function), entry in stats.items():
        for label, needles in PROFILE_LAYERS:
            if any(needle in (function if path == "~" else path) for needle in needles):
                layers[label] += entry[2] * 1000 / count
                break
    return {
        "acks": count,
        "serial_ms_per_ack": serial_ms,
        "acks_per_second_one_core": 1000 / serial_ms,
        "profiled_ms_per_ack": total,
        "points_ms": points,
        "layers_ms": layers,
        "queries": len(queries.captured_queries),
        "statements": statements,
    }


def _admin_server(stack: BenchStack) -> str:
    """A second uvicorn process, for the admin alone (the proxy would route `/admin/` to it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    child = stack._spawn(
        "web-admin",
        [sys.executable, "-m", "uvicorn", "wecom_ai.asgi:application",
         "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        stack._child_env(),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stack._check_alive(child)
        try:
            if httpx.get(base + "/healthz", trust_env=False).status_code == 200:
                return base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the admin server did not start; see {child.log_path}")


def run_config(
    config: WebConfig, scenarios: list[str], options: argparse.Namespace
) -> dict[str, Any]:
    """Start a stack with one web configuration and run the scenarios against it."""
    env = {"DJANGO_SETTINGS_MODULE": SYNC_VIEW_SETTINGS} if config.view == "sync" else {}
    if config.database == "pool":
        env |= {"CONN_MAX_AGE": "0", "DATABASE_POOL_SIZE": str(WEB_POOL_SIZE)}
    elif config.database:
        env["CONN_MAX_AGE"] = config.database
    with BenchStack(
        with_inference_worker="mixed" in scenarios,
        inference_pool=("threads", 8),
        env=env,
        bot_fields={"max_tokens": options.max_tokens},
        web_args=("--workers", str(config.workers)),
    ) as stack:
        workload = _Workload(stack)
        if config.admin_apart:
            workload.admin_url = _admin_server(stack) + ADMIN_PATH
        result: dict[str, Any] = {"label": config.label}
        if "profile" in scenarios:
            result["profile"] = profile_ack(workload, count=options.profile)
        if "plain" in scenarios:
            phases = asyncio.run(
                measure(
                    workload,
                    concurrency=options.concurrency,
                    requests=options.requests,
                    rounds=max(1, min(options.rounds, options.requests)),
                    warmup=options.warmup,
                )
            )
            callback, plain = phases["callback"].summary(), phases["plain"].summary()
            result["plain"] = {
                "callback": callback,
                "plain": plain,
                "ratio_p50": callback["p50_ms"] / plain["p50_ms"],
                "ratio_p99": callback["p99_ms"] / plain["p99_ms"],
                "errors": {kind: phase.errors for kind, phase in phases.items()},
            }
        if "burst" in scenarios:
            result["burst"] = asyncio.run(measure_burst(workload, count=options.burst))
        if "sustained" in scenarios:
            result["sustained"] = asyncio.run(
                measure_sustained(
                    workload,
                    count=options.sustained,
                    concurrency=options.concurrency,
                    warmup=min(options.warmup, 100),
                )
            )
        if "mixed" in scenarios:
            phases = asyncio.run(
                measure_mixed(
                    workload,
                    mentions=options.mentions,
                    concurrency=options.mixed_concurrency,
                    rounds=options.mixed_rounds,
                    gap=2.0,
                )
            )
            summaries = {name: phase.summary() for name, phase in phases.items()}
            result["mixed"] = summaries | {
                "ratio_ack_admin_p50": summaries["ack"]["p50_ms"] / summaries["admin"]["p50_ms"],
                "errors": {name: phase.errors for name, phase in phases.items()},
            }
    return result


def _run_in_child(config: WebConfig, argv: list[str]) -> dict[str, Any]:
    """One configuration in a process of its own: its own Django setup and embedded stores."""
    command = [sys.executable, __file__, *argv, "--web", config.spec]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, check=False)
    try:
        result: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        raise RuntimeError(f"{config.label} failed:\n{done.stderr[-3000:]}") from None
    return dict(result["configs"][0])


def run(options: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    if len(options.web) == 1:
        configs = [run_config(options.web[0], options.scenarios, options)]
    else:
        configs = [_run_in_child(config, argv) for config in options.web]
        for config in configs[1:]:
            config.pop("profile", None)  # the view's own work does not depend on the server
    return {
        "options": {
            key: value if key != "web" else [config.label for config in value]
            for key, value in vars(options).items()
            if key != "json"
        },
        "configs": configs,
        "load_average": [load_before, os.getloadavg()[0]],
    }


def _row(label: str, row: dict[str, Any]) -> str:
    return (
        f"{label:<34}{row['requests']:>9}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}"
        f"{row['p99_ms']:>9.1f}{row['max_ms']:>9.1f}{row['throughput_rps']:>9.1f}"
        f"{row['failures']:>10}"
    )


def render(result: dict[str, Any]) -> str:
    options = result["options"]
    header = (
        f"{'':<34}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'req/s':>9}{'failures':>10}"
    )
    lines: list[str] = []
    for config in result["configs"]:
        lines += ["", f"== {config['label']} =="]
        if profile := config.get("profile"):
            lines += [
                "",
                f"profile: {profile['acks']} acks one at a time in-process (no HTTP): "
                f"{profile['serial_ms_per_ack']:.2f} ms each = "
                f"{profile['acks_per_second_one_core']:.0f} acks/s on one core; "
                f"under cProfile {profile['profiled_ms_per_ack']:.2f} ms",
            ]
            share = profile["profiled_ms_per_ack"]
            lines += [
                f"  {label:<32}{ms:>7.2f} ms {100 * ms / share:>5.1f}%"
                for label, ms in profile["points_ms"].items()
            ]
            lines.append(
                f"  SQL statements per ack: {profile['queries']} ("
                + ", ".join(f"{head} ×{n}" for head, n in profile["statements"].items())
                + ")"
            )
            lines.append("  by layer (own time):")
            lines += [
                f"  {label:<32}{ms:>7.2f} ms {100 * ms / share:>5.1f}%"
                for label, ms in profile["layers_ms"].items()
            ]
        if plain := config.get("plain"):
            lines += [
                "",
                f"plain: concurrency {options['concurrency']}, {options['requests']} requests "
                "each, alternating rounds",
                header,
                _row("callback (POST)", plain["callback"]),
                _row("plain page /healthz", plain["plain"]),
                f"ratio callback/plain: p50 {plain['ratio_p50']:.2f}x, "
                f"p99 {plain['ratio_p99']:.2f}x",
            ]
            for kind, errors in plain["errors"].items():
                lines += [f"{kind} failure: {error}" for error in errors]
        if mixed := config.get("mixed"):
            lines += [
                "",
                f"mixed: {options['mixed_rounds']} rounds of {options['mentions']} mentions at "
                f"concurrency {options['mixed_concurrency']} while answers generate; "
                f"2 clients on {ADMIN_PATH}; open streams refreshed every second",
                header,
                _row("ack (POST mention)", mixed["ack"]),
                _row("stream refresh (POST)", mixed["refresh"]),
                _row(f"admin page {ADMIN_PATH}", mixed["admin"]),
                f"ratio ack/admin p50: {mixed['ratio_ack_admin_p50']:.2f}x",
            ]
            for kind, errors in mixed["errors"].items():
                lines += [f"{kind} failure: {error}" for error in errors]
        if burst := config.get("burst"):
            lines += [
                "",
                f"burst: {burst['sent']} mentions at once: {burst['acked_in_time']} of "
                f"{burst['sent']} acknowledged within {WECOM_ACK_SECONDS:.0f} s "
                f"({burst['acked_in_time'] / burst['sent']:.0%}); p50 {burst['p50_ms']:.0f} ms, "
                f"max {burst['max_ms']:.0f} ms, {burst['throughput_rps']:.0f} acks/s",
            ]
            lines += [f"burst failure: {error}" for error in burst["errors"]]
        if sustained := config.get("sustained"):
            lines += [
                "",
                f"sustained: {sustained['requests']} mentions at concurrency "
                f"{options['concurrency']}: {sustained['throughput_rps']:.0f} acks/s "
                f"(p50 {sustained['p50_ms']:.0f} ms, p99 {sustained['p99_ms']:.0f} ms)",
            ]
            lines += [f"sustained failure: {error}" for error in sustained["errors"]]
    base = result["configs"][0]
    if len(result["configs"]) > 1:
        lines += ["", f"ratios to the first configuration ({base['label']}):"]
        for config in result["configs"][1:]:
            parts = []
            if "sustained" in config:
                parts.append(
                    "sustained acks/s {:.2f}x".format(
                        config["sustained"]["throughput_rps"] / base["sustained"]["throughput_rps"]
                    )
                )
            if "mixed" in config:
                parts.append(
                    "mixed ack p50 {:.2f}x, p99 {:.2f}x".format(
                        config["mixed"]["ack"]["p50_ms"] / base["mixed"]["ack"]["p50_ms"],
                        config["mixed"]["ack"]["p99_ms"] / base["mixed"]["ack"]["p99_ms"],
                    )
                )
            if "burst" in config:
                parts.append(
                    "burst in time {} vs {}".format(
                        config["burst"]["acked_in_time"], base["burst"]["acked_in_time"]
                    )
                )
            lines.append(f"  {config['label']}: " + "; ".join(parts))
    lines += [
        "",
        "1-minute load average before/after: {:.2f} / {:.2f} (compare runs by the ratios)".format(
            *result["load_average"]
        ),
    ]
    return "\n".join(lines).lstrip("\n")


def _failures(result: dict[str, Any]) -> int:
    failed = 0
    for config in result["configs"]:
        if plain := config.get("plain"):
            failed += plain["callback"]["failures"] + plain["plain"]["failures"]
        if mixed := config.get("mixed"):
            failed += sum(mixed[name]["failures"] for name in ("ack", "refresh", "admin"))
        for key in ("burst", "sustained"):
            failed += config.get(key, {}).get("failures", 0)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="plain", help=f"of {','.join(SCENARIOS)}")
    parser.add_argument(
        "--web", default="async:1", help="web configurations VIEW:WORKERS, comma-separated"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--requests", type=int, default=1500, help="measured requests per kind")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per kind")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per kind")
    parser.add_argument("--mentions", type=int, default=40, help="mentions per mixed round")
    parser.add_argument("--mixed-concurrency", type=int, default=8, help="in flight (mixed)")
    parser.add_argument("--mixed-rounds", type=int, default=3, help="measured mixed rounds")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length (mixed)")
    parser.add_argument("--burst", type=int, default=200, help="mentions sent at once")
    parser.add_argument("--sustained", type=int, default=1000, help="mentions (sustained)")
    parser.add_argument("--profile", type=int, default=300, help="acks profiled in-process")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.warmup < 0:
        parser.error("--concurrency and --requests must be positive, --warmup not negative")
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    try:
        args.web = [WebConfig.parse(item.strip()) for item in args.web.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    forwarded = list(sys.argv[1:] if argv is None else argv)
    while "--web" in forwarded:  # each child gets one configuration
        index = forwarded.index("--web")
        del forwarded[index : index + 2]
    forwarded = [arg for arg in forwarded if arg != "--json" and not arg.startswith("--web=")]
    result = run(args, forwarded)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 1 if _failures(result) else 0


if __name__ == "__main__":
    sys.exit(main())

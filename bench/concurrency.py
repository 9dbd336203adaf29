"""Aggregate tokens/s and time to first token under concurrent conversations, three engines.

(a) `BatchingEngine`, this project's continuous batching; (b) `LlamaEngine`, the
single-stream engine, whose lock serialises concurrent requests; (c) llama.cpp's own
`llama-server --parallel N`, built from the llama.cpp that the pinned llama-cpp-python sdist
vendors, with the wheel's CPU flags, and driven over HTTP on 127.0.0.1 through its
OpenAI-compatible streaming endpoint. All three get the same model, threads, prompts,
max_tokens and greedy sampling, and run one at a time.

    .venv/bin/python bench/concurrency.py [--engines a,b,c] [--concurrency 1,4,8,16]
        [--requests-per-client 2] [--min-requests 8] [--max-tokens 64] [--json]

The first run with engine c builds llama-server into ~/.cache/wecom-ai (many minutes on two
cores); `--build-only` does just that.

Each engine is started fresh per concurrency level (slots = --parallel = the level), gets
one unmeasured warm-up request, then N client threads each ask --requests-per-client
questions back to back (one shared system prompt, a distinct question per request), or
more so that a level asks at least --min-requests in all (one stream alone would otherwise
be measured over two answers, about two seconds).
Columns: tok/s = completion tokens of all requests / wall time from the common start to
the last answer; TTFT = send to first non-empty text (for b it includes waiting for the
lock); "p99 later" = p99 TTFT of each client's second and later requests only (they
arrive while others decode, whereas the first ones all arrive at once); "same as b" =
answers identical to the single-stream engine's (a should match b except where b's
streaming drops CJK characters; c decodes with other kernels and batches and differs
after a few tokens). Ratios: (a)/(c) tok/s per level, both as the ratio of each engine's
best round and as the median of the ratios of rounds in which a and c ran back to back
(the host's speed drifts by tens of percent over minutes; a same-round ratio cancels most
of it), (a)/(b) tok/s at 8, and p99 TTFT at 8 over p50 TTFT at 1.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apps.inference.engine.base import ChatRequest, Engine, ModelSpec, SamplingParams
from apps.inference.engine.batching import DEFAULT_PREFIX_CACHE_SIZE, BatchingEngine
from apps.inference.engine.llama import LlamaEngine

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = BASE_DIR / "var" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LOG_DIR = BASE_DIR / "var" / "bench-logs"

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# The CPU flags of the project's llama-cpp-python wheel (Makefile CMAKE_ARGS). Never
# GGML_NATIVE: it turns on AMX on Sapphire Rapids hosts, which crashes in VMs without AMX tiles.
SERVER_CMAKE_FLAGS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
)
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wecom-ai"


def server_dir() -> Path:
    """Where this version and flag set is built: a new flag set never reuses an old binary."""
    key = f"{LLAMA_CPP_PYTHON_VERSION} {' '.join(SERVER_CMAKE_FLAGS)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return CACHE_ROOT / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-{digest}"


def server_binary() -> Path:
    return server_dir() / "bin" / "llama-server"


def build_llama_server(jobs: int = 2) -> Path:
    """Build `llama-server` from the llama.cpp vendored in the pinned sdist, once per flag set."""
    binary = server_binary()
    if binary.is_file():
        return binary
    target = server_dir()
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                # Only this package from source: ":all:" would also build its build
                # dependencies (scikit-build-core, hatchling...) from source, recursively.
                "--no-binary",
                "llama-cpp-python",
                "-d",
                str(work),
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
            ],
            check=True,
        )
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = work / "build"
        subprocess.run(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build),
                "-DCMAKE_BUILD_TYPE=Release",
                "-DBUILD_SHARED_LIBS=OFF",
                *SERVER_CMAKE_FLAGS,
            ],
            check=True,
        )
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
            check=True,
        )
        built = next(build.rglob("llama-server"))
        (target / "bin").mkdir(parents=True, exist_ok=True)
        partial = target / "bin" / "llama-server.partial"
        shutil.copy2(built, partial)
        partial.replace(binary)  # atomic: a crashed build never leaves a half binary behind
    return binary


ENGINE_NAMES = {
    "a": "batching",
    "b": "single-stream",
    "c": "llama-server",
}
# One bot's system prompt shared by every conversation, as on the product.
SYSTEM_PROMPT = (
    "You are the assistant of an enterprise chat platform. Employees ask you about their "
    "work: processes, tools, writing and planning. Answer in the language of the question, "
    "in full sentences, with concrete steps where they help."
)
# Question templates and topics chosen so the small model talks for the whole token budget;
# their product gives every request of a run its own prompt.
TEMPLATES = (
    "Explain step by step how a team should prepare for {topic}.",
    "Write a short guide about {topic} for new employees.",
    "请详细介绍一下如何做好{topic_zh}。",
    "Describe common mistakes people make with {topic} and how to avoid them.",
)
TOPICS = (
    ("its first security audit", "第一次安全审计"),
    ("a product launch", "产品发布"),
    ("the quarterly budget review", "季度预算评审"),
    ("moving to a new office", "搬迁到新办公室"),
    ("onboarding a new colleague", "新同事入职"),
    ("a customer workshop", "客户研讨会"),
    ("an incident postmortem", "故障复盘"),
    ("the annual team offsite", "年度团建"),
    ("a data backup drill", "数据备份演练"),
    ("a software migration", "软件迁移"),
)
TARGET_BATCHING_VS_SERVER = 0.9
TARGET_BATCHING_VS_SINGLE_AT_8 = 1.5
TARGET_TTFT_P99_AT_8_VS_SINGLE = 2.0
TARGET_BATCHING_SCALING_32_VS_1 = 8.0  # on a GPU, where decoding 32 rows costs about one
READY_TIMEOUT_SECONDS = 120.0


def question(index: int) -> str:
    template = TEMPLATES[index % len(TEMPLATES)]
    topic, topic_zh = TOPICS[(index // len(TEMPLATES)) % len(TOPICS)]
    return template.format(topic=topic, topic_zh=topic_zh)


def conversation(index: int) -> tuple[dict[str, str], ...]:
    return (
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question(index)},
    )


@dataclass
class RequestResult:
    ttft_ms: float | None
    completion_tokens: int
    text: str
    error: str = ""


@dataclass
class LevelResult:
    engine: str
    concurrency: int
    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    # Only each client's second and later requests: they arrive while others are decoding,
    # unlike the first ones, which all arrive at once and queue behind each other's prompts.
    ttft_p99_later_ms: float | None
    errors: int
    same_as_single_stream: int | None = None
    texts: list[str] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class BenchConfig:
    model: str
    threads: int
    n_ctx: int
    n_batch: int
    max_tokens: int
    requests_per_client: int
    min_requests: int
    prefix_cache_size: int
    server_flash_attn: str
    request_timeout_s: float
    n_gpu_layers: int = 0
    flash_attn: bool = False
    server_args: tuple[str, ...] = ()

    def spec(self) -> ModelSpec:
        return ModelSpec(
            path=self.model,
            n_ctx=self.n_ctx,
            n_threads=self.threads,
            n_batch=self.n_batch,
            n_gpu_layers=self.n_gpu_layers,
            flash_attn=self.flash_attn,
        )

    def sampling(self) -> SamplingParams:
        # Greedy; the other knobs are the product defaults and do not matter at temperature 0,
        # except repeat_penalty (last 64 tokens in all three engines).
        return SamplingParams(temperature=0.0, max_tokens=self.max_tokens, seed=0)


class Runner:
    """One engine under test, started fresh for each concurrency level."""

    key = ""

    def start(self, concurrency: int) -> None:
        raise NotImplementedError

    def ask(self, messages: tuple[dict[str, str], ...]) -> RequestResult:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class InProcessRunner(Runner):
    """Engines (a) and (b): `submit()` from the client thread, TTFT to the first text piece."""

    def __init__(self, config: BenchConfig, factory: Callable[[int], Engine], key: str) -> None:
        self.config = config
        self.factory = factory
        self.key = key
        self.engine: Engine | None = None

    def start(self, concurrency: int) -> None:
        self.engine = self.factory(concurrency)

    def ask(self, messages: tuple[dict[str, str], ...]) -> RequestResult:
        assert self.engine is not None
        request = ChatRequest(messages=messages, sampling=self.config.sampling())
        started = time.perf_counter()
        generation = self.engine.submit(request)
        ttft = None
        pieces = []
        for piece in generation:
            if ttft is None:
                ttft = (time.perf_counter() - started) * 1000
            pieces.append(piece)
        return RequestResult(ttft, generation.stats.completion_tokens, "".join(pieces))

    def stop(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


class ServerRunner(Runner):
    """Engine (c): llama-server --parallel N, streaming chat completions over loopback HTTP."""

    key = "c"

    def __init__(self, config: BenchConfig, binary: Path) -> None:
        self.config = config
        self.binary = binary
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = LOG_DIR / "llama-server.log"

    def start(self, concurrency: int) -> None:
        config = self.config
        self.port = _free_port()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.binary),
            "--model",
            config.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--parallel",
            str(concurrency),
            # n_ctx is split evenly between slots: each gets the per-sequence window.
            "--ctx-size",
            str(config.n_ctx * concurrency),
            "--threads",
            str(config.threads),
            "--threads-batch",
            str(config.threads),
            "--batch-size",
            str(config.n_batch),
            "--ubatch-size",
            str(min(config.n_batch, 512)),
            "--flash-attn",
            "on" if config.flash_attn else config.server_flash_attn,
            "--n-gpu-layers",
            # llama-server reads -1 as "auto" (fit to free memory); "all" is the library's -1.
            "all" if config.n_gpu_layers < 0 else str(config.n_gpu_layers),
            "--jinja",
            *config.server_args,
        ]
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while not self._healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited early; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server not ready in time; see {self.log_path}")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/health")
            healthy = connection.getresponse().status == 200
            connection.close()
            return healthy
        except OSError:
            return False

    def ask(self, messages: tuple[dict[str, str], ...]) -> RequestResult:
        sampling = self.config.sampling()
        body = json.dumps(
            {
                "messages": list(messages),
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature,
                "top_k": sampling.top_k,
                "top_p": sampling.top_p,
                "min_p": sampling.min_p,
                "repeat_penalty": sampling.repeat_penalty,
                "repeat_last_n": 64,
                "seed": sampling.seed,
            }
        )
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=self.config.request_timeout_s
        )
        started = time.perf_counter()
        ttft = None
        pieces: list[str] = []
        tokens = 0
        try:
            connection.request(
                "POST",
                "/v1/chat/completions",
                body=body.encode("utf-8"),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
            if response.status != 200:
                error = f"HTTP {response.status}: {response.read()[:200]!r}"
                return RequestResult(None, 0, "", error)
            while line := response.readline():
                if not line.startswith(b"data: "):
                    continue
                payload = line[len(b"data: ") :].strip()
                if payload == b"[DONE]":
                    break
                chunk = json.loads(payload)
                for choice in chunk.get("choices") or ():
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if ttft is None:
                            ttft = (time.perf_counter() - started) * 1000
                        pieces.append(content)
                usage = chunk.get("usage")
                if usage:
                    tokens = usage.get("completion_tokens", tokens)
        finally:
            connection.close()
        return RequestResult(ttft, tokens, "".join(pieces))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_level(runner: Runner, concurrency: int, config: BenchConfig) -> LevelResult:
    """`concurrency` clients, each asking its questions back to back, all started together."""
    runner.start(concurrency)
    try:
        runner.ask(conversation(len(TEMPLATES) * len(TOPICS) - 1))  # warm-up, not measured
        results: dict[int, RequestResult] = {}
        gate = threading.Barrier(concurrency + 1)
        per_client = max(config.requests_per_client, math.ceil(config.min_requests / concurrency))

        def client(number: int) -> None:
            gate.wait()
            for turn in range(per_client):
                index = number * per_client + turn
                try:
                    results[index] = runner.ask(conversation(index))
                except Exception as exc:  # reported as an error row, never hidden
                    results[index] = RequestResult(None, 0, "", repr(exc))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
        for thread in threads:
            thread.start()
        gate.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    finally:
        runner.stop()
    ordered = [results[index] for index in sorted(results)]
    ttfts = [result.ttft_ms for result in ordered if result.ttft_ms is not None]
    later = [
        result.ttft_ms
        for index, result in sorted(results.items())
        if index % per_client and result.ttft_ms is not None
    ]
    tokens = sum(result.completion_tokens for result in ordered)
    return LevelResult(
        engine=runner.key,
        concurrency=concurrency,
        requests=len(ordered),
        completion_tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50_ms=percentile(ttfts, 0.5),
        ttft_p99_ms=percentile(ttfts, 0.99),
        ttft_p99_later_ms=percentile(later, 0.99),
        errors=sum(1 for result in ordered if result.error or result.ttft_ms is None),
        texts=[result.text for result in ordered],
    )


def summarise(
    results: list[LevelResult], same_round: dict[int, list[float]] | None = None
) -> dict[str, Any]:
    """Ratios and targets from whatever subset was run; None where a figure is missing.

    `same_round` holds, per level, the a/c tokens/s ratio of each round in which both ran
    back to back; their median is less exposed to the host's drift than the ratio of the
    two best rounds, which may come from different minutes.
    """
    by_key = {(result.engine, result.concurrency): result for result in results}
    for result in results:
        single = by_key.get(("b", result.concurrency))
        if single is not None and result.engine != "b":
            result.same_as_single_stream = sum(
                1 for a, b in zip(result.texts, single.texts, strict=True) if a == b
            )

    def rate(engine: str, concurrency: int) -> float | None:
        result = by_key.get((engine, concurrency))
        return result.tokens_per_s if result is not None else None

    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        if numerator is None or not denominator:
            return None
        return numerator / denominator

    levels = sorted({result.concurrency for result in results})
    a_vs_c = {n: ratio(rate("a", n), rate("c", n)) for n in levels}
    a_vs_b_at_8 = ratio(rate("a", 8), rate("b", 8))
    ttft_ratio = {}
    for engine in ("a", "c"):
        at_8, at_1 = by_key.get((engine, 8)), by_key.get((engine, 1))
        if at_8 is not None and at_1 is not None:
            ttft_ratio[engine] = ratio(at_8.ttft_p99_ms, at_1.ttft_p50_ms)
    paired = {n: statistics.median(ratios) for n, ratios in (same_round or {}).items() if ratios}
    a_scaling = ratio(rate("a", 32), rate("a", 1))
    targets = {
        "a/c tokens/s >= 0.9 at every concurrency": _met(
            [value >= TARGET_BATCHING_VS_SERVER for value in a_vs_c.values() if value is not None]
        ),
        "a/c tokens/s >= 0.9 at every concurrency (median of same-round ratios)": _met(
            [value >= TARGET_BATCHING_VS_SERVER for value in paired.values()]
        ),
        "a/b tokens/s >= 1.5 at 8": _met(
            [a_vs_b_at_8 >= TARGET_BATCHING_VS_SINGLE_AT_8] if a_vs_b_at_8 is not None else []
        ),
        "a tokens/s at 32 >= 8 x at 1": _met(
            [a_scaling >= TARGET_BATCHING_SCALING_32_VS_1] if a_scaling is not None else []
        ),
        "a p99 TTFT at 8 <= 2 x single-request TTFT": _met(
            [ttft_ratio["a"] <= TARGET_TTFT_P99_AT_8_VS_SINGLE]
            if ttft_ratio.get("a") is not None
            else []
        ),
    }
    return {
        "a_vs_c_tokens_per_s": a_vs_c,
        "a_vs_c_same_round": {n: list(ratios) for n, ratios in (same_round or {}).items()},
        "a_vs_c_same_round_median": paired,
        "a_vs_b_tokens_per_s_at_8": a_vs_b_at_8,
        "a_tokens_per_s_at_32_vs_1": a_scaling,
        "ttft_p99_at_8_vs_p50_at_1": ttft_ratio,
        "targets": targets,
    }


def _met(checks: list[bool]) -> str:
    if not checks:
        return "not measured"
    return "met" if all(checks) else "missed"


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def render(
    config: BenchConfig, results: list[LevelResult], summary: dict[str, Any], rounds: int
) -> str:
    lines = [
        f"model {Path(config.model).name}, {config.threads} threads, n_ctx {config.n_ctx} per "
        f"sequence, n_batch {config.n_batch}, n_gpu_layers {config.n_gpu_layers}, "
        f"flash-attn {'on' if config.flash_attn else 'off'} in a/b, "
        f"max_tokens {config.max_tokens}, greedy, "
        f"{config.requests_per_client}+ requests per client and {config.min_requests}+ per "
        f"level, llama-server flash-attn "
        f"{'on' if config.flash_attn else config.server_flash_attn}, best of {rounds} round(s) "
        "per engine and level"
        + (f", llama-server also given {' '.join(config.server_args)}" * bool(config.server_args)),
        "",
        f"{'engine':<18} {'conc':>4} {'reqs':>4} {'tokens':>6} {'wall s':>7} {'tok/s':>7} "
        f"{'TTFT p50 ms':>11} {'TTFT p99 ms':>11} {'p99 later':>9} {'errors':>6} "
        f"{'same as b':>9}",
    ]
    for result in results:
        same = "-" if result.same_as_single_stream is None else str(result.same_as_single_stream)
        lines.append(
            f"{ENGINE_NAMES[result.engine] + ' (' + result.engine + ')':<18} "
            f"{result.concurrency:>4} {result.requests:>4} {result.completion_tokens:>6} "
            f"{result.wall_s:>7.2f} {result.tokens_per_s:>7.1f} "
            f"{_fmt(result.ttft_p50_ms):>11} {_fmt(result.ttft_p99_ms):>11} "
            f"{_fmt(result.ttft_p99_later_ms):>9} {result.errors:>6} {same:>9}"
        )
    lines.append("")
    for concurrency, value in summary["a_vs_c_tokens_per_s"].items():
        line = f"(a)/(c) tokens/s at {concurrency:>2}: {_fmt(value, '.2f')} (best rounds)"
        rounds_seen = summary["a_vs_c_same_round"].get(concurrency)
        if rounds_seen:
            each = ", ".join(f"{ratio:.2f}" for ratio in rounds_seen)
            median = summary["a_vs_c_same_round_median"][concurrency]
            line += f", {median:.2f} median of same-round ratios ({each})"
        lines.append(line)
    lines.append(f"(a)/(b) tokens/s at  8: {_fmt(summary['a_vs_b_tokens_per_s_at_8'], '.2f')}")
    lines.append(f"(a) tokens/s at 32 / at 1: {_fmt(summary['a_tokens_per_s_at_32_vs_1'], '.2f')}")
    for engine, value in summary["ttft_p99_at_8_vs_p50_at_1"].items():
        lines.append(f"({engine}) TTFT p99 at 8 / TTFT p50 at 1: {_fmt(value, '.2f')}")
    lines.append("")
    for target, verdict in summary["targets"].items():
        lines.append(f"target {target}: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="a,b,c", help="subset of a,b,c")
    parser.add_argument("--concurrency", default="1,4,8,16", help="comma-separated levels")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument(
        "--min-requests", type=int, default=8, help="at least this many requests per level"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs per engine and level; the fastest is kept"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=1024, help="context window per sequence")
    parser.add_argument("--n-batch", type=int, default=512)
    parser.add_argument("--prefix-cache-size", type=int, default=DEFAULT_PREFIX_CACHE_SIZE)
    parser.add_argument(
        "--server-flash-attn",
        choices=("off", "on", "auto"),
        default="off",
        help="llama-server's -fa; off matches engines a and b",
    )
    parser.add_argument(
        "--flash-attn",
        action="store_true",
        help="flash attention in every engine (llama-server's -fa on as well)",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="one more llama-server argument (repeat), e.g. --server-arg=--cache-ram=0",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument(
        "--n-gpu-layers", type=int, default=0, help="layers offloaded by every engine; -1 = all"
    )
    parser.add_argument(
        "--server-binary",
        help="a llama-server built elsewhere (e.g. with CUDA) instead of building one here",
    )
    parser.add_argument("--build-only", action="store_true", help="build llama-server and exit")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    if args.build_only:
        print(build_llama_server())
        return 0
    engines = [key.strip() for key in args.engines.split(",") if key.strip()]
    unknown = set(engines) - set(ENGINE_NAMES)
    if unknown:
        parser.error(f"unknown engines: {', '.join(sorted(unknown))}")
    levels = [int(level) for level in args.concurrency.split(",")]
    config = BenchConfig(
        model=args.model,
        threads=args.threads,
        n_ctx=args.n_ctx,
        n_batch=args.n_batch,
        max_tokens=args.max_tokens,
        requests_per_client=args.requests_per_client,
        min_requests=args.min_requests,
        prefix_cache_size=args.prefix_cache_size,
        server_flash_attn=args.server_flash_attn,
        request_timeout_s=args.timeout,
        n_gpu_layers=args.n_gpu_layers,
        flash_attn=args.flash_attn,
        server_args=tuple(args.server_arg),
    )
    spec = config.spec()
    runners: dict[str, Runner] = {
        "a": InProcessRunner(
            config,
            lambda slots: BatchingEngine(
                spec, slots=slots, prefix_cache_size=config.prefix_cache_size
            ),
            "a",
        ),
        "b": InProcessRunner(config, lambda _slots: LlamaEngine(spec), "b"),
    }
    if "c" in engines:
        binary = Path(args.server_binary) if args.server_binary else build_llama_server()
        runners["c"] = ServerRunner(config, binary)
    # a next to c, so each round's a/c ratio compares runs minutes apart at most.
    order = [key for key in ("a", "c", "b") if key in engines]
    same_round: dict[int, list[float]] = {}
    best: dict[tuple[int, str], LevelResult] = {}
    interrupted = False
    # SIGTERM (or Ctrl-C) ends the run early but still reports the levels already measured.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for level in levels:
            for round_number in range(args.rounds):
                # Alternate the order (acb, bca, ...) so slow drift hits every engine alike.
                keys = order if round_number % 2 == 0 else order[::-1]
                this_round: dict[str, LevelResult] = {}
                for key in keys:
                    result = run_level(runners[key], level, config)
                    this_round[key] = result
                    print(
                        f"{ENGINE_NAMES[key]} at concurrency {level}, round {round_number + 1}: "
                        f"{result.tokens_per_s:.1f} tok/s, TTFT p50 "
                        f"{_fmt(result.ttft_p50_ms)} ms, p99 {_fmt(result.ttft_p99_ms)} ms",
                        file=sys.stderr,
                    )
                    # Other load only ever slows a run down: keep each engine's fastest round.
                    kept = best.get((level, key))
                    if kept is None or result.tokens_per_s > kept.tokens_per_s:
                        best[level, key] = result
                if "a" in this_round and "c" in this_round and this_round["c"].tokens_per_s:
                    same_round.setdefault(level, []).append(
                        this_round["a"].tokens_per_s / this_round["c"].tokens_per_s
                    )
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the runs completed so far", file=sys.stderr)
    results = [best[level, key] for level in levels for key in order if (level, key) in best]
    summary = summarise(results, same_round)
    if args.json:
        rows = []
        for result in results:
            row = asdict(result)
            row.pop("texts")
            rows.append(row)
        payload = {
            "config": asdict(config),
            "rounds": args.rounds,
            "interrupted": interrupted,
            "results": rows,
            **summary,
        }
        print(json.dumps(payload, indent=2))
    else:
        print(render(config, results, summary, args.rounds))
    if interrupted:
        return 130
    return 1 if any(result.errors for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())

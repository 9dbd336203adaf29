"""A remote engine through the whole product, next to the same server called directly.

Starts `llama_cpp.server` (llama-cpp-python's OpenAI-compatible server) with the bundled
model on loopback, points a remote model profile at it, and runs, at 1 and at 8
concurrent conversations, (a) the full path: the simulator @-mentions the bench bot,
the inference worker streams from the server through `RemoteEngine`, the simulator polls
stream refreshes; (b) the same server called directly: an SSE chat completion per
conversation with the same messages and sampling. Phases alternate (a, b, b, a) so a
drift of the machine favours neither. A third path, (c) engine, runs `RemoteEngine` in
this process without the rest of the product, to tell the engine's own cost from the
pipeline's (callback, queue, worker, stream refreshes, all on the same cores as the server
here). Prints tokens/s (all conversations together), per-answer decode rate and
first-token latency, and the ratios a/b and c/b (target: a ≥ 0.95× b in tokens/s).

    .venv/bin/python bench/remote.py [--max-tokens 64] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.generate import PROMPTS
from bench.stack import BOT_SLUG, BenchStack, _free_port

MODEL_ALIAS = "bench-remote"
API_KEY = "bench-remote-key"
CONCURRENCIES = (1, 8)
FULL_TIMEOUT_SECONDS = 300.0


@dataclass
class Answer:
    first_token_seconds: float | None  # from sending the question
    tokens: int
    text: str
    problem: str = ""
    decode_seconds: float | None = None  # first to last token

    @property
    def decode_tokens_per_s(self) -> float | None:
        if not self.decode_seconds or self.tokens < 2:
            return None
        return (self.tokens - 1) / self.decode_seconds


@dataclass
class Phase:
    path: str  # "full", "direct" or "engine"
    concurrency: int
    seconds: float
    answers: list[Answer]

    @property
    def tokens(self) -> int:
        return sum(answer.tokens for answer in self.answers)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def first_token_p50_ms(self) -> float | None:
        values = [a.first_token_seconds for a in self.answers if a.first_token_seconds is not None]
        return statistics.median(values) * 1000 if values else None


class Server:
    """`python -m llama_cpp.server` serving the bundled model, one request at a time."""

    def __init__(self, model_path: str, log_path: Path, threads: int | None) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        command = [
            sys.executable, "-m", "llama_cpp.server", "--model", model_path,
            "--model_alias", MODEL_ALIAS, "--api_key", API_KEY, "--host", "127.0.0.1",
            "--port", str(self.port), "--n_ctx", "4096", "--interrupt_requests", "False",
        ]  # fmt: skip
        if threads:
            command += ["--n_threads", str(threads)]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                response = httpx.get(
                    f"{self.base_url}/models",
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    trust_env=False,
                )
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"llama_cpp.server did not start; see {log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        self._log.close()


def _service_messages(prompt: str) -> tuple[dict[str, str], ...]:
    """The messages the worker builds for this prompt, from the service's own selector."""
    from apps.bots import selectors
    from apps.bots.models import Bot, Turn
    from wecom.messages import strip_mention

    bot = Bot.objects.select_related("model_profile").get(slug=BOT_SLUG)
    mention = f"@{bot.name} {prompt}"
    return selectors.conversation_messages(turn=Turn(bot=bot, question=strip_mention(mention)))


def direct_answer(
    server: Server, messages: tuple[dict[str, str], ...], body: dict[str, Any]
) -> Answer:
    """One SSE chat completion, timed like the engine sees it (first content chunk)."""
    started, first, last, tokens, text = time.monotonic(), None, 0.0, 0, []
    with (
        httpx.Client(trust_env=False, timeout=FULL_TIMEOUT_SECONDS) as client,
        client.stream(
            "POST",
            f"{server.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={**body, "messages": list(messages), "stream": True},
        ) as response,
    ):
        if response.status_code != 200:
            response.read()
            return Answer(None, 0, "", f"HTTP {response.status_code}: {response.text[:200]}")
        for line in response.iter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    last = time.monotonic() - started
                    first = first if first is not None else last
                    tokens += 1
                    text.append(content)
    decode = last - first if first is not None else None
    return Answer(first, tokens, "".join(text), decode_seconds=decode)


def engine_answer(engine: Any, messages: tuple[dict[str, str], ...], sampling: Any) -> Answer:
    """One answer from `RemoteEngine` in this process, timed like the direct call."""
    from apps.inference.engine.base import ChatRequest

    started, first, last, text = time.monotonic(), None, 0.0, []
    generation = engine.submit(ChatRequest(messages=messages, sampling=sampling))
    for piece in generation:
        last = time.monotonic() - started
        first = first if first is not None else last
        text.append(piece)
    decode = last - first if first is not None else None
    tokens = generation.stats.completion_tokens
    return Answer(first, tokens, "".join(text), decode_seconds=decode)


def full_answer(stack: BenchStack, prompt: str, userid: str, refresh_interval: float) -> Answer:
    """One @-mention through callback, worker, remote engine and stream refreshes."""
    from apps.bots.models import Turn

    with stack.simulator(refresh_interval=refresh_interval) as simulator:
        result = simulator.ask(
            prompt, userid=userid, chatid=f"chat-{userid}", timeout=FULL_TIMEOUT_SECONDS
        )
    deadline = time.monotonic() + 10
    while True:  # the stream finishes a moment before the turn's row
        turn = Turn.objects.filter(bot__slug=BOT_SLUG, msgid=result.msgid).first()
        if (turn is not None and turn.is_terminal) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if turn is None or turn.status != Turn.Status.ANSWERED:
        status = "missing" if turn is None else f"{turn.status}: {turn.error}"
        return Answer(None, 0, result.answer, f"turn not answered ({status})")
    # The worker's first token, from the callback's arrival: what the engine path adds.
    first = (
        (turn.first_token_at - turn.received_at).total_seconds() if turn.first_token_at else None
    )
    decode = (
        (turn.finished_at - turn.first_token_at).total_seconds()
        if turn.first_token_at and turn.finished_at
        else None
    )
    return Answer(first, turn.completion_tokens, turn.answer, decode_seconds=decode)


def run_phase(path: str, concurrency: int, prompts: list[str], call: Any) -> Phase:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(
            pool.map(call, prompts, [f"u{i % concurrency}" for i in range(len(prompts))])
        )
    return Phase(path, concurrency, time.monotonic() - started, answers)


def run(
    *, max_tokens: int, rounds: int, refresh_interval: float, threads: int | None
) -> dict[str, Any]:
    from django.conf import settings as django_settings  # noqa: F401  (set up by the stack)

    log_dir = Path(os.environ.get("WECOM_AI_DATA", "var")) / "bench-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    model_path = os.environ.get("WECOM_AI_MODEL_PATH", "var/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    server = Server(str(Path(model_path).resolve()), log_dir / "llama-server.log", threads)
    try:
        with BenchStack(
            with_inference_worker=True,
            profile_fields={
                "kind": "remote",
                "gguf_path": "",
                "base_url": server.base_url,
                "remote_model": MODEL_ALIAS,
                "api_key": API_KEY,
                "slots": max(CONCURRENCIES),
            },
            bot_fields={"max_tokens": max_tokens, "context_turns": 0},
            inference_pool=("threads", max(CONCURRENCIES) + 2),
        ) as stack:
            from apps.bots.models import Bot

            bot = Bot.objects.select_related("model_profile").get(slug=BOT_SLUG)
            sampling = bot.sampling()
            body = {
                "model": MODEL_ALIAS,
                "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
            }

            def direct(prompt: str, _userid: str) -> Answer:
                return direct_answer(server, _service_messages(prompt), body)

            def full(prompt: str, userid: str) -> Answer:
                return full_answer(stack, prompt, userid, refresh_interval)

            from apps.inference.engine.remote import RemoteEngine

            remote = RemoteEngine(bot.model_profile.spec())

            def engine(prompt: str, _userid: str) -> Answer:
                return engine_answer(remote, _service_messages(prompt), sampling)

            calls = {"full": full, "direct": direct, "engine": engine}

            full(PROMPTS[0], "warm")  # the worker's engine and connection pool
            direct(PROMPTS[0], "warm")
            phases: list[Phase] = []
            for concurrency in CONCURRENCIES:
                prompts = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency * rounds)]
                for path in ("full", "direct", "engine", "engine", "direct", "full"):
                    phases.append(run_phase(path, concurrency, prompts, calls[path]))
            remote.close()
    finally:
        server.stop()
    return summarise(phases, max_tokens=max_tokens, refresh_interval=refresh_interval)


def summarise(phases: list[Phase], *, max_tokens: int, refresh_interval: float) -> dict[str, Any]:
    rows = []
    for concurrency in CONCURRENCIES:
        by_path: dict[str, list[Phase]] = {"full": [], "direct": [], "engine": []}
        for phase in phases:
            if phase.concurrency == concurrency:
                by_path[phase.path].append(phase)
        row: dict[str, Any] = {"concurrency": concurrency}
        for path, items in by_path.items():
            tokens = sum(p.tokens for p in items)
            seconds = sum(p.seconds for p in items)
            firsts = [p.first_token_p50_ms for p in items if p.first_token_p50_ms is not None]
            rates = [
                a.decode_tokens_per_s
                for p in items
                for a in p.answers
                if a.decode_tokens_per_s is not None
            ]
            row[path] = {
                "answers": sum(len(p.answers) for p in items),
                "problems": [a.problem for p in items for a in p.answers if a.problem],
                "tokens": tokens,
                "tokens_per_s": tokens / seconds if seconds else 0.0,
                "first_token_p50_ms": statistics.median(firsts) if firsts else None,
                "decode_tokens_per_s_p50": statistics.median(rates) if rates else None,
            }
        full, direct, engine = row["full"], row["direct"], row["engine"]
        row["ratio_tokens_per_s"] = (
            full["tokens_per_s"] / direct["tokens_per_s"] if direct["tokens_per_s"] else None
        )
        row["engine_ratio_tokens_per_s"] = (
            engine["tokens_per_s"] / direct["tokens_per_s"] if direct["tokens_per_s"] else None
        )
        if full["decode_tokens_per_s_p50"] and direct["decode_tokens_per_s_p50"]:
            row["ratio_decode"] = (
                full["decode_tokens_per_s_p50"] / direct["decode_tokens_per_s_p50"]
            )
        if full["first_token_p50_ms"] and direct["first_token_p50_ms"]:
            row["ratio_first_token"] = full["first_token_p50_ms"] / direct["first_token_p50_ms"]
        rows.append(row)
    return {"max_tokens": max_tokens, "refresh_interval": refresh_interval, "rows": rows}


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"remote engine (llama_cpp.server, bundled model), max_tokens={summary['max_tokens']}",
        "conc  path    answers  tokens  tokens/s  decode tok/s p50  first token p50",
    ]
    for row in summary["rows"]:
        for path in ("full", "direct", "engine"):
            item = row[path]
            first, decode = item["first_token_p50_ms"], item["decode_tokens_per_s_p50"]
            lines.append(
                f"{row['concurrency']:>4}  {path:<6}  {item['answers']:>7}  {item['tokens']:>6}  "
                f"{item['tokens_per_s']:>8.1f}  {'-' if decode is None else f'{decode:.1f}':>16}  "
                f"{'-' if first is None else f'{first:.0f} ms':>15}"
            )
            lines += [f"      problem: {problem}" for problem in item["problems"]]
        ratio_first = row.get("ratio_first_token")
        ratio_decode = row.get("ratio_decode")
        lines.append(
            f"      full/direct: tokens/s {row['ratio_tokens_per_s']:.3f}×, decode "
            f"{'-' if ratio_decode is None else f'{ratio_decode:.3f}×'}, first token "
            f"{'-' if ratio_first is None else f'{ratio_first:.2f}×'}; engine/direct: tokens/s "
            f"{row['engine_ratio_tokens_per_s']:.3f}×"
        )
    lines.append(
        "tokens/s: all conversations' tokens over the phase's wall time (the full path's "
        "includes the simulator's refresh polling); decode: per answer, first to last token."
    )
    lines.append(
        "first token: full = the worker's first token from the callback's arrival (queue, "
        "claim, prompt build, request); direct = the first content chunk from the request."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="questions per conversation")
    parser.add_argument("--refresh-interval", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None, help="the server's CPU threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    summary = run(
        max_tokens=args.max_tokens,
        rounds=args.rounds,
        refresh_interval=args.refresh_interval,
        threads=args.threads,
    )
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

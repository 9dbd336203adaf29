"""The OpenAI-compatible API next to the WeCom callback path, against the same bot.

Starts the product on its bench database (`BenchStack`: uvicorn and one inference worker
with the bundled model), creates an API key for the bench bot, and runs, at 1 and at 8
concurrent clients, (a) the callback path: the simulator @-mentions the bot and polls
stream refreshes; (b) the API: the official `openai` client streams a chat completion.
Phases alternate (a, b, b, a) so a drift of the machine favours neither. Both are timed
from the client: first content and the whole answer; tokens are the turns' completion
tokens. Prints tokens/s (all clients together), first-content and total latency p50, and
the ratio b/a (target: API ≥ 0.95× the callback path in tokens/s).

    .venv/bin/python bench/api.py [--max-tokens 64] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import PROMPTS
from bench.stack import BOT_SLUG, BenchStack

CONCURRENCIES = (1, 8)
TIMEOUT_SECONDS = 300.0
PATHS = ("callback", "api")


@dataclass
class Answer:
    first_seconds: float | None
    total_seconds: float
    tokens: int
    problem: str = ""
    # The worker's first token after the question arrived: what the client's first content
    # adds on top of it is the delivery's own cost (stream refreshes, or SSE).
    worker_first_seconds: float | None = None
    # From the turn's end in the database to the client holding the whole answer.
    end_lag_seconds: float | None = None


@dataclass
class Phase:
    path: str
    concurrency: int
    seconds: float
    answers: list[Answer]


def _turn_tokens(**lookup: str) -> tuple[int, str, float | None, float | None]:
    """The ended turn's completion tokens, a problem (the row ends just after the stream),
    when its first token came after the question arrived, and when it ended (epoch)."""
    from apps.bots.models import Turn

    deadline = time.monotonic() + 10
    while True:
        turn = Turn.objects.filter(bot__slug=BOT_SLUG, **lookup).first()
        if (turn is not None and turn.is_terminal) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if turn is None or turn.status != Turn.Status.ANSWERED:
        return 0, "missing" if turn is None else f"{turn.status}: {turn.error}", None, None
    first = (
        (turn.first_token_at - turn.received_at).total_seconds() if turn.first_token_at else None
    )
    ended = turn.finished_at.timestamp() if turn.finished_at else None
    return turn.completion_tokens, "", first, ended


def callback_answer(stack: BenchStack, prompt: str, userid: str) -> Answer:
    started = time.time()
    with stack.simulator(refresh_interval=0.2) as simulator:
        result = simulator.ask(
            prompt, userid=userid, chatid=f"chat-{userid}", timeout=TIMEOUT_SECONDS
        )
    tokens, problem, worker_first, ended = _turn_tokens(msgid=result.msgid)
    lag = started + result.total_seconds - ended if ended else None
    return Answer(
        result.first_content_seconds, result.total_seconds, tokens, problem, worker_first, lag
    )


def api_answer(client: Any, prompt: str, userid: str) -> Answer:
    started, first, stream_id = time.monotonic(), None, ""
    stream = client.chat.completions.create(
        model=BOT_SLUG, messages=[{"role": "user", "content": prompt}], stream=True, user=userid
    )
    for chunk in stream:
        stream_id = chunk.id.removeprefix("chatcmpl-")
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.monotonic() - started
    total, done = time.monotonic() - started, time.time()
    tokens, problem, worker_first, ended = _turn_tokens(stream_id=stream_id)
    return Answer(first, total, tokens, problem, worker_first, done - ended if ended else None)


def run_phase(path: str, concurrency: int, prompts: list[str], call: Any, tag: str) -> Phase:
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        # Each client is its own user: three questions per user may wait at once.
        users = [f"{tag}-u{i % concurrency}" for i in range(len(prompts))]
        answers = list(pool.map(call, prompts, users))
    return Phase(path, concurrency, time.monotonic() - started, answers)


def run(
    *, max_tokens: int, rounds: int, concurrencies: tuple[int, ...] = CONCURRENCIES
) -> dict[str, Any]:
    import openai

    with BenchStack(
        with_inference_worker=True,
        bot_fields={
            "max_tokens": max_tokens,
            "context_turns": 0,
            "rate_limit_per_minute": 0,
            "queue_notice_seconds": 300,  # no queue notice as "first content"
        },
    ) as stack:
        from apps.audit.services.operator_audit import SystemActor
        from apps.bots.models import Bot
        from apps.openai_api.services.keys import api_key_create

        _key, raw = api_key_create(
            name="bench",
            bots=[Bot.objects.get(slug=BOT_SLUG)],
            actor=SystemActor("system:bench"),
            rate_limit_per_minute=0,
        )
        client = openai.OpenAI(
            base_url=f"{stack.base_url}/v1", api_key=raw, max_retries=0, timeout=TIMEOUT_SECONDS
        )

        def callback(prompt: str, userid: str) -> Answer:
            return callback_answer(stack, prompt, userid)

        def api(prompt: str, userid: str) -> Answer:
            return api_answer(client, prompt, userid)

        calls = {"callback": callback, "api": api}
        callback(PROMPTS[0], "warm")  # the worker's model
        api(PROMPTS[0], "warm")
        phases: list[Phase] = []
        for concurrency in concurrencies:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(concurrency * rounds)]
            for index, path in enumerate(("callback", "api", "api", "callback")):
                tag = f"c{concurrency}p{index}"
                phases.append(run_phase(path, concurrency, prompts, calls[path], tag))
    return summarise(phases, max_tokens=max_tokens, concurrencies=concurrencies)


def _p50_ms(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) * 1000 if present else None


def summarise(
    phases: list[Phase], *, max_tokens: int, concurrencies: tuple[int, ...]
) -> dict[str, Any]:
    rows = []
    for concurrency in concurrencies:
        row: dict[str, Any] = {"concurrency": concurrency}
        for path in PATHS:
            items = [p for p in phases if p.concurrency == concurrency and p.path == path]
            answers = [a for p in items for a in p.answers]
            seconds = sum(p.seconds for p in items)
            tokens = sum(a.tokens for a in answers)
            row[path] = {
                "answers": len(answers),
                "problems": [a.problem for a in answers if a.problem],
                "tokens": tokens,
                "tokens_per_s": tokens / seconds if seconds else 0.0,
                "first_p50_ms": _p50_ms([a.first_seconds for a in answers]),
                "total_p50_ms": _p50_ms([a.total_seconds for a in answers]),
                "worker_first_p50_ms": _p50_ms([a.worker_first_seconds for a in answers]),
                "end_lag_p50_ms": _p50_ms([a.end_lag_seconds for a in answers]),
            }
        base = row["callback"]["tokens_per_s"]
        row["ratio_tokens_per_s"] = row["api"]["tokens_per_s"] / base if base else None
        rows.append(row)
    return {"max_tokens": max_tokens, "rows": rows}


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"OpenAI-compatible API vs WeCom callback (bundled model), "
        f"max_tokens={summary['max_tokens']}",
        "conc  path      answers  tokens  tokens/s  first p50  total p50  "
        "worker first p50  end lag p50",
    ]
    for row in summary["rows"]:
        for path in PATHS:
            cell = row[path]
            lines.append(
                f"{row['concurrency']:>4}  {path:<8}  {cell['answers']:>7}  {cell['tokens']:>6}"
                f"  {cell['tokens_per_s']:>8.1f}  {_ms(cell['first_p50_ms']):>9}"
                f"  {_ms(cell['total_p50_ms']):>9}  {_ms(cell['worker_first_p50_ms']):>16}"
                f"  {_ms(cell['end_lag_p50_ms']):>11}"
            )
            for problem in cell["problems"][:3]:
                lines.append(f"      problem: {problem}")
        ratio = row["ratio_tokens_per_s"]
        verdict = "—" if ratio is None else f"{ratio:.2f}× ({'ok' if ratio >= 0.95 else 'BELOW'})"
        lines.append(f"      api/callback tokens/s: {verdict} (target ≥ 0.95×)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="questions per client per phase")
    parser.add_argument(
        "--concurrency", type=int, action="append", help="clients (default: 1 and 8)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    concurrencies = tuple(args.concurrency or CONCURRENCIES)
    summary = run(max_tokens=args.max_tokens, rounds=args.rounds, concurrencies=concurrencies)
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    ok = all(
        row["ratio_tokens_per_s"] is not None and not row["api"]["problems"]
        for row in summary["rows"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Tokens/s and time to first token through the whole product, next to llama.cpp called directly.

The full path is what an employee gets: the simulator posts an @-mention, the worker
generates into Redis, the simulator polls stream refreshes. The direct path is
`llama_cpp.Llama.create_chat_completion` in this process with the same model, load
parameters, messages and sampling. The two run one after the other, never at once.

    .venv/bin/python bench/generate.py [--prompts 5] [--max-tokens 128] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import BOT_SLUG, BenchStack

# A fixed English/Chinese mix that makes a small model talk for the whole token budget.
PROMPTS = (
    "Explain step by step how a team should prepare for its first security audit.",
    "请详细介绍一下企业微信机器人可以帮助员工完成哪些日常工作。",
    "Write a short guide to running an effective weekly team meeting.",
    "请解释什么是数据库索引，以及它为什么能让查询变快。",
    "Describe what a new employee should do during their first week at a company.",
    "请列出提高团队工作效率的五个建议，并分别说明理由。",
    "What are good practices for writing clear and useful commit messages?",
    "用几段话说明为什么企业需要定期备份数据。",
)
WARMUP_PROMPT = "Introduce yourself to the team in a few sentences."
USERID = "bench-user"
CHATID = "bench-chat"
TURN_SETTLE_SECONDS = 10.0
TTFT_NOTE = (
    "The full path's TTFT runs from posting the message to the first non-empty stream content "
    "the simulator sees: it includes the callback, Celery queueing and pickup, prompt "
    "evaluation in the worker, the worker's Redis flush and up to one refresh interval "
    "({interval:.2f}s) of polling. Simulator-side tokens/s is quantised by that interval at "
    "both ends; the worker-side figure comes from the Turn's first_token_at/finished_at."
)


@dataclass
class DirectRun:
    ttft_ms: float | None
    completion_tokens: int
    tokens_per_s: float | None
    answer: str


@dataclass
class FullRun:
    ttft_ms: float | None
    completion_tokens: int
    tokens_per_s: float | None
    worker_tokens_per_s: float | None
    worker_ttft_ms: float | None
    refreshes: int
    answer: str
    problem: str


@dataclass
class PromptResult:
    prompt: str
    order: str
    direct: DirectRun
    full: FullRun

    @property
    def same_answer(self) -> bool:
        return self.direct.answer.strip() == self.full.answer.strip()


def _rate(tokens: int, seconds: float | None) -> float | None:
    return tokens / seconds if seconds and seconds > 0 else None


@contextlib.contextmanager
def _sampled_tokens(llama: Any) -> Iterator[list[int]]:
    """Count tokens sampled by `llama`: what the engine's n_tokens arithmetic counts too."""
    count = [0]
    sample = llama.sample

    def counting(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return sample(*args, **kwargs)

    llama.sample = counting
    try:
        yield count
    finally:
        del llama.sample


def direct_load(spec: Any) -> Any:
    """Load the model with exactly the arguments `LlamaEngine` passes."""
    import llama_cpp

    if spec.chat_template:
        raise SystemExit("the bench profile must use the GGUF's own chat template")
    return llama_cpp.Llama(
        model_path=spec.path,
        n_ctx=spec.n_ctx,
        n_gpu_layers=spec.n_gpu_layers,
        n_threads=spec.n_threads,
        n_batch=spec.n_batch,
        chat_format=spec.chat_format,
        seed=spec.seed,
        verbose=False,
    )


def direct_answer(llama: Any, messages: Sequence[dict[str, str]], sampling: Any) -> DirectRun:
    """One streamed chat completion, timed from the call to the first and last content."""
    llama.reset()  # the engine starts every request from an empty context, so do we
    pieces: list[str] = []
    first = last = None
    with _sampled_tokens(llama) as sampled:
        started = time.perf_counter()
        stream = llama.create_chat_completion(
            messages=list(messages),
            stream=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repeat_penalty,
            max_tokens=sampling.max_tokens,
            stop=list(sampling.stop),
            seed=sampling.seed,
        )
        for chunk in stream:
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                last = time.perf_counter()
                first = first or last
                pieces.append(text)
    tokens = sampled[0]
    return DirectRun(
        ttft_ms=(first - started) * 1000 if first else None,
        completion_tokens=tokens,
        tokens_per_s=_rate(tokens, last - first if first and last else None),
        answer="".join(pieces),
    )


def _turn_settled(msgid: str) -> Any:
    """The Turn once its row is final: the stream finishes a moment before the row update."""
    from apps.bots.models import Turn

    deadline = time.monotonic() + TURN_SETTLE_SECONDS
    while True:
        turn = Turn.objects.filter(bot__slug=BOT_SLUG, msgid=msgid).first()
        if (turn is not None and turn.is_terminal) or time.monotonic() > deadline:
            return turn
        time.sleep(0.02)


def full_answer(
    simulator: Any, prompt: str, expected_messages: tuple[dict[str, str], ...], timeout: float
) -> FullRun:
    import httpx

    from apps.bots import selectors
    from apps.bots.models import Turn
    from wecom.simulator import SimulatorError

    try:
        result = simulator.ask(prompt, userid=USERID, chatid=CHATID, timeout=timeout)
    except (SimulatorError, httpx.HTTPError) as exc:
        return FullRun(None, 0, None, None, None, 0, "", f"the exchange failed: {exc!r}")
    turn = _turn_settled(result.msgid)
    problem = ""
    if not result.finished:
        problem = f"stream not finished after {timeout:.0f}s"
    elif turn is None or turn.status != Turn.Status.ANSWERED:
        status = "missing" if turn is None else f"{turn.status}: {turn.error}"
        problem = f"turn not answered ({status})"
    elif selectors.conversation_messages(turn=turn) != expected_messages:
        problem = "the service built other messages than the direct run used"
    tokens = turn.completion_tokens if turn is not None else 0
    first = result.first_content_seconds
    worker_tps = worker_ttft = None
    if turn is not None and turn.first_token_at and turn.finished_at:
        worker_tps = _rate(tokens, (turn.finished_at - turn.first_token_at).total_seconds())
        worker_ttft = (turn.first_token_at - turn.received_at).total_seconds() * 1000
    return FullRun(
        ttft_ms=first * 1000 if first is not None else None,
        completion_tokens=tokens,
        tokens_per_s=_rate(tokens, result.total_seconds - first if first is not None else None),
        worker_tokens_per_s=worker_tps,
        worker_ttft_ms=worker_ttft,
        refreshes=result.refreshes,
        answer=turn.answer if turn is not None else result.answer,
        problem=problem,
    )


def _service_messages(prompt: str) -> tuple[dict[str, str], ...]:
    """The messages the worker will build for this prompt, from the service's own selector."""
    from apps.bots import selectors
    from apps.bots.models import Bot, Turn
    from wecom.messages import strip_mention

    bot = Bot.objects.select_related("model_profile").get(slug=BOT_SLUG)
    mention = f"@{bot.name} {prompt}"  # what the simulator sends in a group
    return selectors.conversation_messages(turn=Turn(bot=bot, question=strip_mention(mention)))


def run(
    *, prompts: int, max_tokens: int, refresh_interval: float, threads: int | None, timeout: float
) -> dict[str, Any]:
    profile_fields = {"threads": threads} if threads else {}
    load_before = os.getloadavg()[0]
    with BenchStack(
        with_inference_worker=True,
        profile_fields=profile_fields,
        bot_fields={"max_tokens": max_tokens},
    ) as stack:
        from apps.bots.models import Bot

        bot = Bot.objects.select_related("model_profile").get(slug=BOT_SLUG)
        spec, sampling = bot.model_profile.spec(), bot.sampling()
        llama = direct_load(spec)
        results: list[PromptResult] = []
        with stack.simulator(refresh_interval=refresh_interval) as simulator:
            direct_answer(llama, _service_messages(WARMUP_PROMPT), sampling)
            warm = full_answer(simulator, WARMUP_PROMPT, _service_messages(WARMUP_PROMPT), timeout)
            if warm.problem:
                raise SystemExit(f"warm-up through the full path failed: {warm.problem}")
            for index in range(prompts):
                prompt = PROMPTS[index % len(PROMPTS)]
                messages = _service_messages(prompt)
                if index % 2 == 0:
                    direct = direct_answer(llama, messages, sampling)
                    full = full_answer(simulator, prompt, messages, timeout)
                else:
                    full = full_answer(simulator, prompt, messages, timeout)
                    direct = direct_answer(llama, messages, sampling)
                order = "direct→full" if index % 2 == 0 else "full→direct"
                results.append(PromptResult(prompt, order, direct, full))
        n_threads = llama.n_threads
        llama.close()
    summary = _summary(results, spec, sampling, n_threads, refresh_interval)
    summary["load_average"] = [load_before, os.getloadavg()[0]]
    return summary


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _summary(
    results: list[PromptResult], spec: Any, sampling: Any, n_threads: int, interval: float
) -> dict[str, Any]:
    rows = []
    for result in results:
        direct, full = result.direct, result.full
        rows.append(
            {
                "prompt": result.prompt,
                "order": result.order,
                "direct": asdict(direct),
                "full": asdict(full),
                "ttft_diff_ms": None
                if direct.ttft_ms is None or full.ttft_ms is None
                else full.ttft_ms - direct.ttft_ms,
                "ratio_tokens_per_s": _ratio(full.tokens_per_s, direct.tokens_per_s),
                "ratio_worker_tokens_per_s": _ratio(full.worker_tokens_per_s, direct.tokens_per_s),
                "same_answer": result.same_answer,
            }
        )
    return {
        "model": spec.path,
        "n_ctx": spec.n_ctx,
        "n_threads": n_threads,
        "n_batch": spec.n_batch,
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "refresh_interval": interval,
        "prompts": rows,
        "median": {
            "direct_ttft_ms": _median([r["direct"]["ttft_ms"] for r in rows]),
            "full_ttft_ms": _median([r["full"]["ttft_ms"] for r in rows]),
            "worker_ttft_ms": _median([r["full"]["worker_ttft_ms"] for r in rows]),
            "ttft_diff_ms": _median([r["ttft_diff_ms"] for r in rows]),
            "direct_tokens_per_s": _median([r["direct"]["tokens_per_s"] for r in rows]),
            "full_tokens_per_s": _median([r["full"]["tokens_per_s"] for r in rows]),
            "worker_tokens_per_s": _median([r["full"]["worker_tokens_per_s"] for r in rows]),
            "ratio_tokens_per_s": _median([r["ratio_tokens_per_s"] for r in rows]),
            "ratio_worker_tokens_per_s": _median([r["ratio_worker_tokens_per_s"] for r in rows]),
        },
        "failures": [f"prompt {i + 1}: {r['full']['problem']}" for i, r in enumerate(rows)]
        if any(r["full"]["problem"] for r in rows)
        else [],
        "note": TTFT_NOTE.format(interval=interval),
    }


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def render(summary: dict[str, Any]) -> str:
    median = summary["median"]
    lines = [
        f"Generation: {Path(summary['model']).name}, n_ctx {summary['n_ctx']}, "
        f"threads {summary['n_threads']}, n_batch {summary['n_batch']}, "
        f"max_tokens {summary['max_tokens']}, temperature {summary['temperature']:g}; "
        f"{len(summary['prompts'])} prompts, direct and full path alternating",
        "",
        f"{'#':>2} {'order':<12}{'tokens d/f':>11}{'TTFT d ms':>10}{'TTFT f ms':>10}"
        f"{'diff ms':>9}{'worker TTFT':>12}{'tok/s d':>9}{'tok/s f':>9}{'tok/s wkr':>10}"
        f"{'f/d':>6}{'wkr/d':>7}  same",
    ]
    for number, row in enumerate(summary["prompts"], start=1):
        direct, full = row["direct"], row["full"]
        lines.append(
            f"{number:>2} {row['order']:<12}"
            f"{direct['completion_tokens']:>5}/{full['completion_tokens']:<5}"
            f"{_fmt(direct['ttft_ms']):>10}{_fmt(full['ttft_ms']):>10}"
            f"{_fmt(row['ttft_diff_ms'], '+.0f'):>9}{_fmt(full['worker_ttft_ms']):>12}"
            f"{_fmt(direct['tokens_per_s'], '.1f'):>9}{_fmt(full['tokens_per_s'], '.1f'):>9}"
            f"{_fmt(full['worker_tokens_per_s'], '.1f'):>10}"
            f"{_fmt(row['ratio_tokens_per_s'], '.2f'):>6}"
            f"{_fmt(row['ratio_worker_tokens_per_s'], '.2f'):>7}"
            f"  {'yes' if row['same_answer'] else 'no'}"
        )
    lines += [
        f"{'median':<15}{'':>11}{_fmt(median['direct_ttft_ms']):>10}"
        f"{_fmt(median['full_ttft_ms']):>10}{_fmt(median['ttft_diff_ms'], '+.0f'):>9}"
        f"{_fmt(median['worker_ttft_ms']):>12}{_fmt(median['direct_tokens_per_s'], '.1f'):>9}"
        f"{_fmt(median['full_tokens_per_s'], '.1f'):>9}"
        f"{_fmt(median['worker_tokens_per_s'], '.1f'):>10}"
        f"{_fmt(median['ratio_tokens_per_s'], '.2f'):>6}"
        f"{_fmt(median['ratio_worker_tokens_per_s'], '.2f'):>7}",
        "",
        "tokens/s full ÷ direct (median of per-prompt ratios): "
        f"simulator side {_fmt(median['ratio_tokens_per_s'], '.2f')}, "
        f"worker side {_fmt(median['ratio_worker_tokens_per_s'], '.2f')}",
        f"TTFT full − direct (median): {_fmt(median['ttft_diff_ms'], '+.0f')} ms",
        "",
        "d = llama-cpp-python called directly, f = full path seen by the simulator, "
        "wkr = worker-side (Turn timestamps); worker TTFT = received_at → first_token_at.",
        summary["note"],
        "1-minute load average before/after: {:.2f} / {:.2f} (compare runs by the ratios)".format(
            *summary["load_average"]
        ),
    ]
    lines += [f"FAILURE {failure}" for failure in summary["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=5, help="questions, each asked both ways")
    parser.add_argument("--max-tokens", type=int, default=128, help="answer tokens per question")
    parser.add_argument(
        "--refresh-interval", type=float, default=0.05, help="simulator's stream poll interval"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="profile threads (default: llama.cpp's)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per full-path ask")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.max_tokens < 1 or args.refresh_interval <= 0:
        parser.error("--prompts, --max-tokens and --refresh-interval must be positive")
    summary = run(
        prompts=args.prompts,
        max_tokens=args.max_tokens,
        refresh_interval=args.refresh_interval,
        threads=args.threads,
        timeout=args.timeout,
    )
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json else render(summary))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

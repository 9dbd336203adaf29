"""Long connection vs callback: message → first frame and → final frame, p50/p99.

The same model, worker and question set answer a callback-mode bot (the project's WeCom
simulator polling refreshes over HTTP) and a long-connection bot (`LongConnSimulator` on
loopback, the real `longconn_run` connector forwarding stream frames), at 1 and 16
concurrent conversations, one conversation per simulated employee. "First" is the first
frame with content (callback: the first refresh answer with content), "final" the
accepted frame with `finish: true`. The callback path is the baseline of the same run.

    .venv/bin/python bench/longconn.py [--levels 1,16] [--questions 2] [--max-tokens 48]
        [--refresh-interval 0.5] [--json]

On the long connection each conversation is throttled to WeCom's 30 messages a minute, so
intermediate frames are about 2 s apart; the final frame is never held back longer than
the budget requires.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import BenchStack

LC_SLUG = "bench-lc"
LC_BOT_ID = "bench-longconn"
LC_SECRET = "bench-longconn-secret"
QUESTIONS = (
    "How many days of annual leave do new employees get?",
    "年假怎么算？",
    "How do I submit a travel expense?",
    "报销流程是什么？",
    "Who approves overtime?",
    "What is the notice period for resignation?",
)


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _summary(first: list[float], final: list[float], failures: int) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "answers": len(final),
        "failures": failures,
        "first_p50_ms": ms(_percentile(first, 0.5)),
        "first_p99_ms": ms(_percentile(first, 0.99)),
        "final_p50_ms": ms(_percentile(final, 0.5)),
        "final_p99_ms": ms(_percentile(final, 0.99)),
        "final_mean_ms": ms(statistics.fmean(final) if final else None),
    }


def _concurrently(level: int, questions: int, ask: Any) -> dict[str, Any]:
    first: list[float] = []
    final: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def conversation(index: int) -> None:
        for round_ in range(questions):
            question = QUESTIONS[(index + round_) % len(QUESTIONS)]
            try:
                first_s, final_s = ask(f"bench-user-{index}", question)
            except Exception:
                first_s = final_s = None
            with lock:
                if final_s is None:
                    failures[0] += 1
                    continue
                final.append(final_s)
                if first_s is not None:
                    first.append(first_s)

    threads = [threading.Thread(target=conversation, args=(i,)) for i in range(level)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _summary(first, final, failures[0])


def _long_connection_bot(max_tokens: int) -> None:
    from apps.bots.models import Bot

    callback_bot = Bot.objects.get(slug="bench")
    Bot.objects.filter(slug=LC_SLUG).delete()
    Bot.objects.create(
        slug=LC_SLUG,
        name="bench-lc",
        connection_mode=Bot.ConnectionMode.LONG_CONNECTION,
        aibotid=LC_BOT_ID,
        longconn_secret=LC_SECRET,
        model_profile=callback_bot.model_profile,
        system_prompt=callback_bot.system_prompt,
        max_tokens=max_tokens,
        context_turns=0,
        rate_limit_per_minute=0,
    )


def run(
    *, levels: list[int], questions: int, max_tokens: int, refresh_interval: float
) -> dict[str, Any]:
    from wecom.simulator_longconn_thread import LongConnSimulatorThread

    results: dict[str, Any] = {"levels": {}}
    with (
        LongConnSimulatorThread(bots={LC_BOT_ID: LC_SECRET}) as wecom_ws,
        BenchStack(with_inference_worker=True, bot_fields={"max_tokens": max_tokens}) as stack,
    ):
        _long_connection_bot(max_tokens)
        connector_env = stack._child_env() | {"WECOM_LONGCONN_POLL_SECONDS": "0.5"}
        stack._spawn(
            "connector",
            [sys.executable, "manage.py", "longconn_run", "--url", wecom_ws.url],
            connector_env,
        )
        wecom_ws.wait_subscribed(LC_BOT_ID, timeout=90)

        def ask_callback(userid: str, question: str) -> tuple[float | None, float | None]:
            with stack.simulator(refresh_interval=refresh_interval) as sim:
                result = sim.ask(question, userid=userid, timeout=300)
            return result.first_content_seconds, (result.total_seconds if result.finished else None)

        def ask_long(userid: str, question: str) -> tuple[float | None, float | None]:
            answer = wecom_ws.ask(LC_BOT_ID, question, userid=userid, timeout=300)
            return answer.first_frame_seconds, (answer.total_seconds if answer.finished else None)

        ask_callback("bench-warmup", QUESTIONS[0])  # loads the model; not measured
        for level in levels:
            results["levels"][str(level)] = {
                "callback": _concurrently(level, questions, ask_callback),
                "long_connection": _concurrently(level, questions, ask_long),
            }
    results.update(questions_per_conversation=questions, max_tokens=max_tokens)
    return results


def _print(results: dict[str, Any]) -> None:
    print(
        f"{'conv':>4} {'path':<16} {'n':>3} {'fail':>4} "
        f"{'first p50':>10} {'first p99':>10} {'final p50':>10} {'final p99':>10}  (ms)"
    )
    for level, paths in results["levels"].items():
        for path, s in paths.items():
            print(
                f"{level:>4} {path:<16} {s['answers']:>3} {s['failures']:>4} "
                f"{s['first_p50_ms']!s:>10} {s['first_p99_ms']!s:>10} "
                f"{s['final_p50_ms']!s:>10} {s['final_p99_ms']!s:>10}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--levels", default="1,16", help="concurrent conversations, comma-separated"
    )
    parser.add_argument("--questions", type=int, default=2, help="questions per conversation")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--refresh-interval", type=float, default=0.5, help="callback polling")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(
        levels=[int(x) for x in args.levels.split(",") if x.strip()],
        questions=args.questions,
        max_tokens=args.max_tokens,
        refresh_interval=args.refresh_interval,
    )
    if args.json:
        print(json.dumps(results))
    else:
        _print(results)


if __name__ == "__main__":
    main()

"""Self-built app and 微信客服 vs the AI-bot callback: question → delivered answer, p50/p99.

The same model, worker and question set answer through three doors: the AI-bot callback
(the project's WeCom simulator polling refreshes; "delivered" = the stream's finish), the
self-built app (an encrypted XML callback; "delivered" = the answer's last part accepted
by the loopback `message/send`) and 微信客服 (the customer's message logged at the
simulator and announced by a `kf_msg_or_event` callback; the worker pulls it with
`kf/sync_msg`; "delivered" = accepted by `kf/send_msg`). 1 and 16 concurrent users, one
user per conversation; the callback path is the baseline of the same run.

    .venv/bin/python bench/doors.py [--levels 1,16] [--questions 2] [--max-tokens 48]
        [--refresh-interval 0.5] [--json]

The app and kf paths add a default-queue worker (pushes, pulls) beside the inference
worker; the app's thinking notice is off so that only answers are counted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in {None, ""}:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.longconn import QUESTIONS, _concurrently
from bench.stack import BenchStack
from wecom.simulator_app import AppApiServer, AppCallbackBuilder

CORP_ID = "wwbench0000000001"
AGENT_ID = 1000009
SECRET = "bench-app-secret"
APP_TOKEN = "benchAppToken"
APP_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
KFID = "wkbench0000000001"
USERS = {f"bench-user-{index}" for index in range(64)} | {"bench-warmup"}
_PART = re.compile(r"^\((\d+)/(\d+)\) ")


def _answer_complete(messages: list[str]) -> bool:
    """The messages since the question hold a whole answer (one, or all numbered parts)."""
    if not messages:
        return False
    numbered = _PART.match(messages[-1])
    return numbered is None or numbered.group(1) == numbered.group(2)


def _wait_delivered(read: Callable[[], list[str]], before: int, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if _answer_complete(read()[before:]):
            return time.monotonic() - started
        time.sleep(0.02)
    return None


def _app_rows(stack: BenchStack) -> tuple[str, str]:
    from apps.bots.models import Bot
    from apps.wecomapp.models import KfCursor, WeComApp

    WeComApp.objects.filter(slug="bench-app").delete()
    KfCursor.objects.all().delete()
    app = WeComApp.objects.create(
        name="bench app",
        slug="bench-app",
        bot=Bot.objects.get(slug=stack.bot.slug),
        corp_id=CORP_ID,
        agent_id=AGENT_ID,
        secret=SECRET,
        token=APP_TOKEN,
        encoding_aes_key=APP_AES_KEY,
        thinking_notice_seconds=0,
    )
    return stack.base_url + app.callback_path(), app.slug


def run(
    *, levels: list[int], questions: int, max_tokens: int, refresh_interval: float
) -> dict[str, Any]:
    results: dict[str, Any] = {"levels": {}}
    with (
        AppApiServer(
            corp_id=CORP_ID, secret=SECRET, agent_id=AGENT_ID, users=USERS, open_kfids={KFID}
        ) as api,
        BenchStack(
            with_inference_worker=True,
            env={"WECOM_API_BASE": api.base_url},
            bot_fields={"max_tokens": max_tokens, "rate_limit_per_minute": 0},
        ) as stack,
    ):
        callback_url, _slug = _app_rows(stack)
        stack._spawn(
            "default",
            [
                sys.executable, "-m", "celery", "-A", "wecom_ai", "worker", "-Q", "default",
                "-c", "4", "-P", "threads", "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-n", "bench-default@%h", "--loglevel", "INFO",
            ],
            stack._child_env(),
        )  # fmt: skip
        builder = AppCallbackBuilder(
            token=APP_TOKEN, encoding_aes_key=APP_AES_KEY, corp_id=CORP_ID, agent_id=AGENT_ID
        )
        msgids = iter(range(10**9, 2 * 10**9))

        def ask_callback(userid: str, question: str) -> tuple[float | None, float | None]:
            with stack.simulator(refresh_interval=refresh_interval) as sim:
                result = sim.ask(question, userid=userid, timeout=300)
            return None, (result.total_seconds if result.finished else None)

        def ask_app(userid: str, question: str) -> tuple[float | None, float | None]:
            def read() -> list[str]:
                return api.contents(touser=userid)

            before = len(read())
            started = time.monotonic()
            xml = builder.text_xml(userid=userid, content=question, msgid=str(next(msgids)))
            builder.post(callback_url, xml).raise_for_status()
            waited = _wait_delivered(read, before, 300)
            return None, (None if waited is None else time.monotonic() - started)

        def ask_kf(userid: str, question: str) -> tuple[float | None, float | None]:
            def read() -> list[str]:
                return api.kf.texts_to(userid)

            before = len(read())
            started = time.monotonic()
            token = api.kf.customer_says(open_kfid=KFID, external_userid=userid, text=question)
            builder.post(callback_url, builder.kf_event_xml(token=token, open_kfid=KFID))
            waited = _wait_delivered(read, before, 300)
            return None, (None if waited is None else time.monotonic() - started)

        ask_callback("bench-warmup", QUESTIONS[0])  # loads the model; not measured
        ask_app("bench-warmup", QUESTIONS[1])  # the first access token; not measured
        for level in levels:
            results["levels"][str(level)] = {
                "callback": _concurrently(level, questions, ask_callback),
                "app": _concurrently(level, questions, ask_app),
                "kf": _concurrently(level, questions, ask_kf),
            }
    results.update(questions_per_conversation=questions, max_tokens=max_tokens)
    return results


def _print(results: dict[str, Any]) -> None:
    print(f"{'users':>5} {'path':<9} {'n':>3} {'fail':>4} {'p50':>9} {'p99':>9} {'mean':>9}  (ms)")
    for level, paths in results["levels"].items():
        for path, s in paths.items():
            print(
                f"{level:>5} {path:<9} {s['answers']:>3} {s['failures']:>4} "
                f"{s['final_p50_ms']!s:>9} {s['final_p99_ms']!s:>9} {s['final_mean_ms']!s:>9}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,16", help="concurrent users, comma-separated")
    parser.add_argument("--questions", type=int, default=2, help="questions per user")
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

"""Many employees at once: a threads-pool worker feeding one batching engine, through WeCom.

A real `celery worker -P threads` runs the bundled model with several slots; the WeCom
side is the simulator, one per employee, all asking at the same moment.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from apps.bots.models import Turn
from apps.inference.model_load import model_load_get
from tests.conftest import turn_terminal
from wecom.simulator import AskResult

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

QUESTIONS = (
    "How many days of annual leave do new employees get?",
    "年假怎么算？",
    "How do I reset my VPN password?",
    "报销需要哪些材料？",
    "Where can I find the holiday calendar?",
    "试用期多长时间？",
    "Who approves overtime?",
    "公司的午休时间是几点？",
)
QUEUE_NOTICE = "排在第"  # the zh-Hans queue notice, WeCom replies' default language


def _ask_together(simulator_for, bot, questions: tuple[str, ...]) -> list[AskResult]:
    """Every employee sends at the same moment, each from their own simulated client."""
    simulators = [simulator_for(bot) for _ in questions]
    start = threading.Barrier(len(questions))

    def ask(index: int) -> AskResult:
        start.wait()
        return simulators[index].ask(
            questions[index], userid=f"employee{index}", chatid="grp-all-hands", timeout=240
        )

    with ThreadPoolExecutor(len(questions)) as pool:
        return list(pool.map(ask, range(len(questions))))


def test_eight_employees_asking_at_once_are_streamed_together(
    make_bot, model_profile, simulator_for, start_worker
):
    model_profile.slots = 8
    model_profile.save()
    bot = make_bot(max_tokens=40)
    start_worker(pool="threads", concurrency=8)

    results = _ask_together(simulator_for, bot, QUESTIONS)

    turns = [turn_terminal(result.msgid) for result in results]
    assert len(turns) == len(QUESTIONS)
    assert all(turn.status == Turn.Status.ANSWERED for turn in turns)
    for result in results:
        assert result.finished and result.answer.strip()
        # Each bubble filled in over several refreshes, not in one piece at the end.
        assert len(result.snapshots) >= 2, result.snapshots
        assert QUEUE_NOTICE not in result.content
    # All eight were streaming at the same moment: every answer had started before the
    # first one finished.
    assert max(turn.first_token_at for turn in turns) < min(turn.finished_at for turn in turns)


def test_employees_beyond_the_slots_are_told_their_queue_position(
    make_bot, model_profile, simulator_for, start_worker
):
    model_profile.slots = 2
    model_profile.save()
    bot = make_bot(max_tokens=64, queue_notice_seconds=0)
    start_worker(pool="threads", concurrency=6)
    loads = []
    watching = threading.Event()

    def watch_load() -> None:
        while not watching.is_set():
            if (load := model_load_get(profile_id=model_profile.pk)) is not None:
                loads.append(load)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_load)
    watcher.start()
    try:
        results = _ask_together(simulator_for, bot, QUESTIONS[:5])
    finally:
        watching.set()
        watcher.join()

    assert all(result.finished and result.answer.strip() for result in results)
    told = [
        snapshot for result in results for snapshot in result.snapshots if QUEUE_NOTICE in snapshot
    ]
    # Five questions, two slots: at least one employee waited and was told where in line.
    assert told, [result.snapshots for result in results]
    assert all(any(f"第 {n} 位" in snapshot for n in (1, 2, 3)) for snapshot in told)
    # The notice gives way to the answer; it is never part of what the employee ends with.
    assert all(QUEUE_NOTICE not in result.content for result in results)
    assert all(QUEUE_NOTICE not in turn_terminal(result.msgid).answer for result in results)
    # The admin's live load saw both slots busy while others waited.
    assert any(load.slots == 2 and load.running == 2 for load in loads), loads
    assert any(load.waiting >= 1 for load in loads), loads


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_inference_worker_loads_models_at_start_and_reports_their_load(
    make_bot, model_profile, start_worker, pool
):
    # Given an enabled bot, and a worker told to warm its models
    make_bot()
    start_worker(pool=pool, WECOM_AI_WARM_MODELS="1")

    # When nobody has asked anything yet, the worker still loads the model (in the process
    # that runs the tasks) and publishes its idle load for the admin.
    deadline = time.monotonic() + 120
    while (load := model_load_get(profile_id=model_profile.pk)) is None:
        assert time.monotonic() < deadline, "the worker never reported the model loaded"
        time.sleep(0.2)

    assert (load.slots, load.running, load.waiting, load.workers) == (model_profile.slots, 0, 0, 1)

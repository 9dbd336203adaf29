"""Per-model queues: a turn waits in its model profile's queue, workers started with
`--profiles` take only those profiles' turns, and a profile that no live worker serves
is shown in the admin and its turns end with a message instead of waiting out the window."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import redis
from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from apps.bots.models import Conversation, Turn
from apps.bots.services import deliver, receive, recover
from apps.bots.streams import StreamState, stream_state_get, stream_state_set
from apps.inference.model_workers import (
    inference_worker_leave,
    inference_worker_publish,
    inference_workers_live,
    profile_workers,
)
from apps.inference.models import ModelProfile
from tests.conftest import turn_terminal
from wecom_ai.celery import app as celery_app
from wecom_ai.queues import inference_queue

NO_WORKER_ZH = "当前没有推理 worker"


def _broker() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def _queued_turn(bot, *, msgid: str, queued_ago: float) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(bot=bot, chat_type="single", userid="u1")
    now = timezone.now()
    turn = Turn.objects.create(
        bot=bot, conversation=conversation, msgid=msgid, stream_id=f"s-{msgid}",
        question="年假怎么算？", received_at=now - dt.timedelta(seconds=queued_ago + 1),
        queued_at=now - dt.timedelta(seconds=queued_ago),
    )  # fmt: skip
    stream_state_set(turn.stream_id, StreamState(deadline=time.time() + 300))
    return turn


@pytest.mark.django_db
def test_a_turn_is_sent_to_its_model_profiles_queue(bot):
    other = ModelProfile.objects.create(name="other", gguf_path=bot.model_profile.gguf_path)
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="u1")
    turn = Turn.objects.create(
        bot=bot, conversation=conversation, msgid="m1", stream_id="s1", question="hi",
        received_at=timezone.now(),
    )  # fmt: skip
    assert receive.turn_enqueue(turn_id=turn.pk)
    broker = _broker()
    # Counted over each queue's priority lists (kombu keeps one list per priority step).
    with celery_app.connection_for_write() as conn:
        names = (inference_queue(bot.model_profile_id), inference_queue(other.pk), "inference")
        sizes = {name: int(conn.default_channel._size(name)) for name in names}
    assert list(sizes.values()) == [1, 0, 0]
    [listed] = [key for key in broker.keys(f"{inference_queue(bot.model_profile_id)}*")]
    message = json.loads(broker.lindex(listed, 0))
    assert message["headers"]["task"] == "apps.bots.tasks.turn_generate"


@pytest.mark.django_db
def test_a_profile_no_live_worker_serves_fails_its_queued_turns_with_a_message(bot):
    turn = _queued_turn(bot, msgid="m-nobody", queued_ago=recover.NO_WORKER_GRACE.seconds + 5)
    fresh = _queued_turn(bot, msgid="m-fresh", queued_ago=1)
    assert deliver.turns_sweep() == 1
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED
    assert "no live inference worker" in turn.error
    state = stream_state_get(turn.stream_id)
    assert state is not None and state.finish and NO_WORKER_ZH in state.content
    # A turn queued a moment ago is given the time a worker needs to take it.
    fresh.refresh_from_db()
    assert fresh.status == Turn.Status.QUEUED


@pytest.mark.django_db
def test_a_worker_serving_the_profile_keeps_its_turns_waiting(bot):
    other = ModelProfile.objects.create(name="other", gguf_path=bot.model_profile.gguf_path)
    turn = _queued_turn(bot, msgid="m-served", queued_ago=recover.NO_WORKER_GRACE.seconds + 5)
    inference_worker_publish(name="inference@gpu-1", profile_ids=frozenset({other.pk}))
    assert deliver.turns_sweep() == 1  # a worker lives, but not for this bot's model
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED
    turn = _queued_turn(bot, msgid="m-served-2", queued_ago=recover.NO_WORKER_GRACE.seconds + 5)
    inference_worker_publish(name="inference@cpu-1", profile_ids=None)  # every profile
    assert deliver.turns_sweep() == 0
    turn.refresh_from_db()
    assert turn.status == Turn.Status.QUEUED
    assert [w.name for w in profile_workers(profile_id=bot.model_profile_id)] == ["inference@cpu-1"]
    inference_worker_leave(name="inference@cpu-1")
    assert [w.name for w in inference_workers_live()] == ["inference@gpu-1"]


@pytest.mark.django_db
def test_the_admin_shows_which_workers_serve_a_profile(admin_client, model_profile):
    url = reverse("admin:inference_modelprofile_change", args=[model_profile.pk])
    page = admin_client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "No live inference worker serves this model" in page
    inference_worker_publish(name="inference@gpu-1", profile_ids=frozenset({model_profile.pk}))
    page = admin_client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "1 worker: inference@gpu-1" in page
    listing = admin_client.get(reverse("admin:inference_modelprofile_changelist"))
    assert "inference@gpu-1" in listing.content.decode()


def _loaded_by(profile: ModelProfile) -> set[int]:
    """Pids of the worker processes that loaded the profile's engine (its live-load record)."""
    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    fields = client.hkeys(f"wecom_ai:model-load:{profile.pk}")
    return {int(field.decode().rsplit(":", 1)[1]) for field in fields}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_workers_started_for_some_profiles_answer_only_those(
    make_bot, model_profile, simulator_for, start_worker
):
    second = ModelProfile.objects.create(
        name="second", gguf_path=model_profile.gguf_path, context_size=1024, temperature=0.0
    )
    first_bot = make_bot(name="first", slug="first")
    second_bot = make_bot(name="second", slug="second", model_profile=second)
    # By name and by id; threads, so the engine lives in the worker's own process.
    by_name = start_worker(queues="inference", pool="threads", args=["--profiles", "SmolLM2 test"])
    by_id = start_worker(queues="inference", pool="threads", args=["--profiles", str(second.pk)])
    for sim_bot in (first_bot, second_bot, first_bot, second_bot):
        result = simulator_for(sim_bot).ask("@HR助手 年假怎么算", userid="u1", timeout=120)
        assert result.finished
        assert turn_terminal(result.msgid).status == Turn.Status.ANSWERED
    assert _loaded_by(model_profile) == {by_name.process.pid}
    assert _loaded_by(second) == {by_id.process.pid}
    served = {w.name.split("@")[0]: w.profile_ids for w in inference_workers_live()}
    assert sorted(served.values(), key=sorted) == [
        frozenset({model_profile.pk}),
        frozenset({second.pk}),
    ]
    assert f"Started consuming from {inference_queue(second.pk)}" not in by_name.log()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_plain_inference_worker_takes_profiles_created_after_it_started(
    make_bot, model_profile, simulator_for, start_worker
):
    worker = start_worker(queues="inference", pool="threads")
    assert [w.profile_ids for w in inference_workers_live()] == [None], worker.log()
    later = ModelProfile.objects.create(
        name="later", gguf_path=model_profile.gguf_path, temperature=0.0
    )
    bot = make_bot(model_profile=later)
    result = simulator_for(bot).ask("@HR助手 年假怎么算", userid="u1", timeout=120)
    assert result.finished
    assert turn_terminal(result.msgid).status == Turn.Status.ANSWERED
    assert f"Started consuming from {inference_queue(later.pk)}" in worker.log()
    worker.stop()
    assert inference_workers_live() == []  # a stopped worker withdraws its record


@pytest.mark.slow
def test_an_unknown_profile_stops_the_worker_at_start(start_worker):
    with pytest.raises(RuntimeError, match="no model profile 'nope'"):
        start_worker(queues="inference", pool="threads", args=["--profiles", "nope"])

"""A/B variants through the real pipeline (issue 15, item 4): a question from a user in a
variant is queued on the variant's model, answered by a worker that serves only that model,
and the turn records the variant."""

from __future__ import annotations

import pytest
from django.conf import settings

from apps.bots.models import Turn
from apps.bots.services.variants import variant_buckets_assign
from apps.bots.variants import BotVariant, user_bucket
from apps.inference.models import ModelProfile
from tests.conftest import turn_terminal


def _loaded_by(profile: ModelProfile) -> set[int]:
    """Pids of the worker processes that loaded the profile's engine (its live-load record)."""
    import redis

    client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    fields = client.hkeys(f"wecom_ai:model-load:{profile.pk}")
    return {int(field.decode().rsplit(":", 1)[1]) for field in fields}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_variant_users_question_runs_on_the_variants_model(
    bot, model_profile, simulator_for, start_worker
):
    second = ModelProfile.objects.create(
        name="variant model", gguf_path=model_profile.gguf_path, context_size=1024, temperature=0.0
    )
    variant = BotVariant.objects.create(bot=bot, name="B", weight=50, model_profile=second)
    variant_buckets_assign(bot=bot)
    variant.refresh_from_db()
    in_variant = next(
        u
        for u in (f"u{n}" for n in range(500))
        if user_bucket(bot_id=bot.pk, userid=u) in variant.buckets
    )
    in_control = next(
        u
        for u in (f"u{n}" for n in range(500))
        if user_bucket(bot_id=bot.pk, userid=u) not in variant.buckets
    )
    # Each model has a worker of its own: a turn sent to the wrong queue lands on the other.
    own = start_worker(queues="inference", pool="threads", args=["--profiles", str(second.pk)])
    other = start_worker(
        queues="inference", pool="threads", args=["--profiles", str(model_profile.pk)]
    )
    for userid, expected in ((in_variant, variant), (in_control, None)):
        result = simulator_for(bot).ask("@HR助手 年假怎么算", userid=userid, timeout=120)
        assert result.finished
        turn = turn_terminal(result.msgid)
        assert turn.status == Turn.Status.ANSWERED, turn.error
        assert turn.variant == expected
    assert _loaded_by(second) == {own.process.pid}
    assert _loaded_by(model_profile) == {other.process.pid}

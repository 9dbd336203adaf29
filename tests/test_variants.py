"""A/B variants (issue 15, item 4): a stable share of a bot's users gets another model or
prompt, each turn records its variant, the admin compares the variants with the control
and promotes the winner."""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from prometheus_client import REGISTRY

from apps.audit.models import OperatorAuditEntry
from apps.bots import selectors
from apps.bots.models import Bot, Conversation, Turn
from apps.bots.services import generate, receive, recover
from apps.bots.services.config import bot_delete
from apps.bots.services.variants import (
    turn_variant_apply,
    variant_buckets_assign,
    variant_for_user,
    variant_promote,
)
from apps.bots.streams import StreamState, stream_state_set
from apps.bots.variant_comparison import variants_compare
from apps.bots.variants import BotVariant, turn_profile_id, user_bucket
from apps.inference.models import ModelProfile
from tests.test_admin import _bot_form
from wecom.messages import InboundMessage
from wecom_ai.celery import app as celery_app
from wecom_ai.queues import inference_queue

pytestmark = pytest.mark.django_db

USERS = [f"user{n:05d}" for n in range(10_000)]


@pytest.fixture
def other_profile(model_profile) -> ModelProfile:
    return ModelProfile.objects.create(
        name="variant model", gguf_path=model_profile.gguf_path, temperature=0.0
    )


def variant(bot: Bot, name: str, weight: int, **fields) -> BotVariant:
    made = BotVariant.objects.create(
        bot=bot, name=name, weight=weight, system_prompt=fields.pop("system_prompt", "Be brief."),
        **fields,
    )  # fmt: skip
    variant_buckets_assign(bot=bot)
    made.refresh_from_db()
    return made


def assignment(bot: Bot) -> dict[str, int | None]:
    by_bucket = {
        b: v.pk for v in BotVariant.objects.filter(bot=bot, enabled=True) for b in v.buckets
    }
    return {user: by_bucket.get(user_bucket(bot_id=bot.pk, userid=user)) for user in USERS}


def test_a_users_bucket_is_a_pinned_function_of_bot_and_user():
    # Pinned values: a change of the hash would move every user of every running test.
    # Python's hash() is salted per process, so the same user could land elsewhere
    # after a restart; SHA-256 cannot.
    assert user_bucket(bot_id=1, userid="zhangsan") == 42
    assert user_bucket(bot_id=2, userid="zhangsan") == 32
    assert user_bucket(bot_id=1, userid="lisi") == 12
    assert all(0 <= user_bucket(bot_id=7, userid=user) < 100 for user in USERS[:500])


def test_variants_get_their_share_of_10000_users(bot, other_profile):
    first = variant(bot, "A", 20, model_profile=other_profile)
    second = variant(bot, "B", 30)
    counts = Counter(assignment(bot).values())
    assert abs(counts[first.pk] / len(USERS) - 0.20) < 0.02
    assert abs(counts[second.pk] / len(USERS) - 0.30) < 0.02
    assert abs(counts[None] / len(USERS) - 0.50) < 0.02
    # What a message's admission asks gives the same answer as the buckets.
    for user in USERS[:200]:
        chosen = variant_for_user(bot=bot, userid=user)
        assert (chosen.pk if chosen else None) == assignment(bot)[user]


def test_changing_one_weight_moves_only_the_users_it_must(bot):
    first, second = variant(bot, "A", 20), variant(bot, "B", 30)
    before = assignment(bot)
    BotVariant.objects.filter(pk=first.pk).update(weight=30)
    variant_buckets_assign(bot=bot)
    after = assignment(bot)
    moved = {(before[u], after[u]) for u in USERS if before[u] != after[u]}
    assert moved == {(None, first.pk)}  # only control users, and only into the grown variant
    assert abs(sum(1 for u in USERS if before[u] != after[u]) / len(USERS) - 0.10) < 0.02
    # Shrinking and disabling give users back to the control, never to another variant.
    BotVariant.objects.filter(pk=second.pk).update(weight=10)
    BotVariant.objects.filter(pk=first.pk).update(enabled=False)
    variant_buckets_assign(bot=bot)
    final = assignment(bot)
    assert {(after[u], final[u]) for u in USERS if after[u] != final[u]} == {
        (second.pk, None),
        (first.pk, None),
    }
    assert all(final[u] == second.pk for u in USERS if after[u] == second.pk and final[u])


def _message(msgid: str, userid: str) -> InboundMessage:
    return InboundMessage(
        msgid=msgid, aibotid="", chattype="single", chatid=None, userid=userid,
        msgtype="text", text="@HR助手 年假怎么算", response_url=None, image_urls=(),
        quote=None, raw={},
    )  # fmt: skip


def _queue_sizes(*profiles: int) -> list[int]:
    with celery_app.connection_for_write() as conn:
        return [int(conn.default_channel._size(inference_queue(p))) for p in profiles]


def test_a_turn_records_its_variant_and_is_queued_on_the_variants_model(
    bot, other_profile, django_capture_on_commit_callbacks
):
    chosen = variant(bot, "A", 100, model_profile=other_profile, system_prompt="Answer in verse.")
    with django_capture_on_commit_callbacks(execute=True):
        turn = receive.mention_receive(
            bot=bot, message=_message("m1", "zhangsan"), received_at=timezone.now()
        )
    assert turn.variant == chosen
    assert _queue_sizes(other_profile.pk, bot.model_profile_id) == [1, 0]
    # The worker's instance answers with the variant's model and prompt; the row stays.
    held = Turn.objects.select_related("bot__model_profile").get(pk=turn.pk)
    turn_variant_apply(turn=held)
    assert held.bot.model_profile == other_profile
    assert selectors.conversation_messages(turn=held)[0]["content"] == "Answer in verse."
    assert Bot.objects.get(pk=bot.pk).model_profile_id == bot.model_profile_id
    # A WeCom retry of the same message, and the sweeper, use the variant's queue too.
    assert turn_profile_id(Turn.objects.get(pk=turn.pk)) == other_profile.pk
    assert receive.turn_enqueue(turn_id=turn.pk)
    assert _queue_sizes(other_profile.pk, bot.model_profile_id) == [2, 0]


def test_a_prompt_only_variant_runs_on_the_bots_model_and_control_has_no_variant(
    bot, django_capture_on_commit_callbacks
):
    variant(bot, "prompt", 100, system_prompt="Answer in one line.")
    with django_capture_on_commit_callbacks(execute=True):
        turn = receive.mention_receive(
            bot=bot, message=_message("m1", "zhangsan"), received_at=timezone.now()
        )
    assert turn.variant is not None and turn_profile_id(turn) == bot.model_profile_id
    BotVariant.objects.update(enabled=False)
    variant_buckets_assign(bot=bot)
    later = receive.mention_receive(
        bot=bot, message=_message("m2", "zhangsan"), received_at=timezone.now()
    )
    assert later.variant is None


def test_the_sweeper_names_the_variants_model_when_no_worker_serves_it(bot, other_profile):
    chosen = variant(bot, "A", 100, model_profile=other_profile)
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="zhangsan")
    now = timezone.now()
    turn = Turn.objects.create(
        bot=bot, conversation=conversation, msgid="m1", stream_id="s1", question="hi",
        received_at=now - dt.timedelta(seconds=60), queued_at=now - dt.timedelta(seconds=50),
        variant=chosen,
    )  # fmt: skip
    stream_state_set(turn.stream_id, StreamState(deadline=time.time() + 300))
    assert recover.turns_recover() == 1
    turn.refresh_from_db()
    assert "'variant model'" in turn.error


def test_a_claimed_variant_turn_counts_its_queue_wait_under_the_variants_model(
    bot, other_profile, django_capture_on_commit_callbacks
):
    chosen = variant(bot, "A", 100, model_profile=other_profile)
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="zhangsan")
    now = timezone.now()
    turn = Turn.objects.create(
        bot=bot, conversation=conversation, msgid="m1", stream_id="s1", question="hi",
        received_at=now, queued_at=now, variant=chosen,
    )  # fmt: skip
    name = "wecomai_queue_wait_seconds_count"
    before = REGISTRY.get_sample_value(name, {"model": "variant model"}) or 0.0
    with django_capture_on_commit_callbacks(execute=True):  # metrics count after commit
        claimed = generate.turn_claim(turn_id=turn.pk)
    assert claimed is not None and claimed.bot.model_profile == other_profile
    assert REGISTRY.get_sample_value(name, {"model": "variant model"}) == before + 1


def _seed(bot, variant_obj, *, msgid: str, status: str = "answered", first: float | None = None,
          total: float | None = None, tokens: int = 0, feedback: int | None = None,
          is_test: bool = False) -> Turn:  # fmt: skip
    conversation, _ = Conversation.objects.get_or_create(bot=bot, chat_type="single", userid="u")
    received = timezone.now() - dt.timedelta(hours=1)
    return Turn.objects.create(
        bot=bot, conversation=conversation, msgid=msgid, stream_id=f"s-{msgid}", question="q",
        status=status, received_at=received, variant=variant_obj, is_test=is_test,
        first_token_at=received + dt.timedelta(seconds=first) if first is not None else None,
        finished_at=received + dt.timedelta(seconds=total) if total is not None else None,
        prompt_tokens=10, completion_tokens=tokens, feedback=feedback,
    )  # fmt: skip


def test_the_comparison_counts_each_arm_in_sql(bot):
    chosen = variant(bot, "A", 50)
    for n, seconds in enumerate((1, 2, 3, 4)):
        _seed(bot, None, msgid=f"c{n}", first=seconds, total=2 * seconds, tokens=20,
              feedback=1 if n < 3 else 2)  # fmt: skip
    _seed(bot, None, msgid="c-failed", status="failed", first=1, total=90)
    _seed(bot, None, msgid="c-rejected", status="rejected", total=0)  # not about the model
    _seed(bot, None, msgid="c-test", first=50, total=50, is_test=True)  # the admin's test chat
    _seed(bot, chosen, msgid="v1", first=0.5, total=1, tokens=40, feedback=2)
    _seed(bot, chosen, msgid="v2", status="failed", total=90)
    _seed(bot, chosen, msgid="v3", status="failed", total=90)
    now = timezone.now()
    control, arm = variants_compare(bot=bot, since=now - dt.timedelta(days=1), until=now)
    assert control.variant is None and arm.variant == chosen
    assert (control.turns, control.answered, control.failed) == (5, 4, 1)
    assert control.failure_rate == pytest.approx(0.2)
    assert control.first_token_p50 == pytest.approx(2.0)  # 1, 1, 2, 3, 4 (the failed one too)
    assert control.first_token_p95 == pytest.approx(3.8)
    assert control.total_p50 == pytest.approx(5.0)  # answered only: 2, 4, 6, 8
    assert control.total_p95 == pytest.approx(7.7)
    assert (control.prompt_tokens_total, control.completion_tokens_total) == (50, 80)
    assert control.completion_tokens_avg == pytest.approx(20)
    assert (control.thumbs_up, control.thumbs_down, control.thumbs_up_rate) == (3, 1, 0.75)
    assert (arm.turns, arm.answered, arm.failed) == (3, 1, 2)
    assert arm.failure_rate == pytest.approx(2 / 3)
    assert (arm.total_p50, arm.thumbs_up_rate) == (pytest.approx(1.0), 0.0)
    # Outside the period nothing counts.
    [empty, empty_arm] = variants_compare(
        bot=bot, since=now - dt.timedelta(days=9), until=now - dt.timedelta(days=8)
    )
    assert (empty.turns, empty.failure_rate, empty.total_p50, empty_arm.turns) == (0, None, None, 0)


def test_promoting_a_variant_makes_it_the_bots_setting_with_an_audit_entry(bot, other_profile):
    admin = User.objects.create_superuser("boss", password="x")
    chosen = variant(bot, "A", 40, model_profile=other_profile, system_prompt="Answer in verse.")
    other = variant(bot, "B", 40)
    variant_promote(variant=chosen, actor=admin, request_id="req-1")
    bot.refresh_from_db()
    assert (bot.model_profile, bot.system_prompt) == (other_profile, "Answer in verse.")
    assert not BotVariant.objects.filter(enabled=True).exists()
    assert list(BotVariant.objects.values_list("buckets", flat=True)) == [[], []]
    assert variant_for_user(bot=bot, userid="zhangsan") is None
    entry = OperatorAuditEntry.objects.get(action="bots.variant.promote")
    assert entry.actor_username == "boss" and entry.request_id == "req-1"
    assert entry.object_id == str(bot.pk)
    assert entry.before["bot"]["system_prompt"] == "You are a concise HR assistant."
    assert entry.after["bot"]["model_profile_id"] == other_profile.pk
    assert "token" not in entry.after["bot"]  # only what changed, secrets never
    assert entry.after["promoted"] == {"id": chosen.pk, "name": "A"}
    assert {v["id"]: v["enabled"] for v in entry.before["variants"]} == {
        chosen.pk: True,
        other.pk: True,
    }


def staff(username: str, *codenames: str) -> Client:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="bots", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def test_the_comparison_page_and_promotion_are_scoped_like_the_bot(bot, other_profile):
    chosen = variant(bot, "A", 40, model_profile=other_profile)
    page = reverse("admin:bots_bot_variants", args=[bot.pk])
    promote = reverse("admin:bots_bot_variant_promote", args=[bot.pk, chosen.pk])
    nobody = staff("nobody", "view_turn")
    assert nobody.get(page).status_code == 403
    assert nobody.post(promote).status_code == 403
    assert (
        staff("ghost", "change_bot")
        .get(reverse("admin:bots_bot_variants", args=[bot.pk + 100]))
        .status_code
        == 404
    )
    viewer = staff("viewer", "view_bot")
    shown = viewer.get(page, HTTP_ACCEPT_LANGUAGE="en")
    assert shown.status_code == 200
    assert "variant-promote" not in shown.content.decode()
    assert viewer.post(promote).status_code == 403
    assert BotVariant.objects.get(pk=chosen.pk).enabled
    editor = staff("editor", "view_bot", "change_bot")
    assert editor.get(promote).status_code == 405  # a change is a POST
    assert "variant-promote" in editor.get(page).content.decode()
    response = editor.post(promote)
    assert response.status_code == 302 and response.url == page
    bot.refresh_from_db()
    assert bot.model_profile == other_profile
    assert OperatorAuditEntry.objects.get(action="bots.variant.promote").actor_username == "editor"


def test_the_comparison_page_renders_in_both_languages_and_links_each_arms_turns(admin_client, bot):
    chosen = variant(bot, "A", 40)
    _seed(bot, chosen, msgid="v1", first=0.5, total=1, tokens=40, feedback=1)
    change = admin_client.get(reverse("admin:bots_bot_change", args=[bot.pk])).content.decode()
    page_url = reverse("admin:bots_bot_variants", args=[bot.pk])
    assert page_url in change
    english = admin_client.get(page_url, {"days": 30}, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "control (the bot's own settings)" in english
    assert f'data-variant="{chosen.pk}"' in english
    chinese = admin_client.get(page_url, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "对照组" in chinese and "用户占比" in chinese and "share of users" not in chinese
    # Each arm's count links to its turns in the turn list (scoped and logged as ever).
    listing = reverse("admin:bots_turn_changelist")
    for query in (f"variant__id__exact={chosen.pk}", "variant__isnull=True"):
        assert query in english
        response = admin_client.get(f"{listing}?bot__id__exact={bot.pk}&{query}")
        assert response.status_code == 200
    response = admin_client.get(f"{listing}?variant__id__exact={chosen.pk}")
    assert response.context["cl"].result_count == 1


def _variant_rows(*rows: dict, initial: int = 0) -> dict:
    data = {"variants-TOTAL_FORMS": str(len(rows)), "variants-INITIAL_FORMS": str(initial)}
    for n, row in enumerate(rows):
        data.update({f"variants-{n}-{key}": value for key, value in row.items()})
    return data


def test_variants_are_set_up_inline_on_the_bot_within_100_percent(
    admin_client, bot, model_profile, other_profile
):
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    form = _bot_form(model_profile, slug=bot.slug, new_token="", new_encoding_aes_key="")
    too_much = _variant_rows(
        {"name": "A", "weight": "60", "model_profile": other_profile.pk, "enabled": "on"},
        {"name": "B", "weight": "50", "system_prompt": "Be brief.", "enabled": "on"},
    )
    response = admin_client.post(url, {**form, **too_much}, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 200
    assert "add up to more than 100" in response.content.decode()
    empty = _variant_rows({"name": "C", "weight": "10", "enabled": "on"})
    response = admin_client.post(url, {**form, **empty}, HTTP_ACCEPT_LANGUAGE="en")
    assert "changes the model, the system prompt or both" in response.content.decode()
    fitting = _variant_rows(
        {"name": "A", "weight": "60", "model_profile": other_profile.pk, "enabled": "on"},
        {"name": "B", "weight": "50", "system_prompt": "Be brief."},  # disabled: not counted
    )
    response = admin_client.post(url, {**form, **fitting})
    assert response.status_code == 302, response.content.decode()[:3000]
    first, second = BotVariant.objects.order_by("pk")
    assert (len(first.buckets), second.buckets) == (60, [])
    entry = OperatorAuditEntry.objects.get(action="bots.variant.update")
    assert entry.before == {"variants": []}
    assert [v["name"] for v in entry.after["variants"]] == ["A", "B"]
    # The bot form posted without its variants (older scripts) leaves them as they are.
    response = admin_client.post(url, form)
    assert response.status_code == 302
    assert BotVariant.objects.count() == 2


def test_a_variant_that_answered_cannot_be_deleted_only_disabled(admin_client, bot, model_profile):
    chosen = variant(bot, "A", 40)
    _seed(bot, chosen, msgid="v1", first=0.5, total=1)
    url = reverse("admin:bots_bot_change", args=[bot.pk])
    form = _bot_form(model_profile, slug=bot.slug, new_token="", new_encoding_aes_key="")
    rows = _variant_rows(
        {"id": chosen.pk, "bot": bot.pk, "name": "A", "weight": "40",
         "system_prompt": "Be brief.", "enabled": "on", "DELETE": "on"},
        initial=1,
    )  # fmt: skip
    response = admin_client.post(url, {**form, **rows}, HTTP_ACCEPT_LANGUAGE="en")
    assert response.status_code == 200
    assert BotVariant.objects.filter(pk=chosen.pk).exists()


def test_deleting_a_bot_deletes_its_variants_and_their_turns(bot):
    # A variant's turns hold it (RESTRICT) only against deleting the variant alone.
    chosen = variant(bot, "A", 40)
    _seed(bot, chosen, msgid="v1", first=0.5, total=1)
    _seed(bot, None, msgid="c1", first=0.5, total=1)
    bot_delete(bot=bot, actor=None)
    assert not Bot.objects.filter(pk=bot.pk).exists()
    assert not BotVariant.objects.exists() and not Turn.objects.exists()

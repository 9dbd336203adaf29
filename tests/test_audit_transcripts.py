"""Bot transcripts in the admin are scoped to the officer's bots and every opening is logged."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AccessLog
from apps.audit.services.review import review_scope_set
from apps.bots.models import Conversation, Turn
from tests.access_reason import REASON, open_with_reason

pytestmark = pytest.mark.django_db


def make_turn(bot, answer: str) -> Turn:
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="wangwu")
    return Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=f"m-{bot.slug}",
        stream_id=f"s-{bot.slug}",
        question=f"{bot.slug}的问题",
        answer=answer,
        status=Turn.Status.ANSWERED,
        received_at=timezone.now(),
    )


@pytest.fixture
def scenario(make_bot, admin_user):
    """Officer A is assigned to the HR bot only; HR and IT each have one turn."""
    hr, it = make_bot(), make_bot(name="IT助手", slug="it")
    turn_hr, turn_it = make_turn(hr, "年假五天"), make_turn(it, "重启路由器")
    officer = User.objects.create_user("officer_a", password="x", is_staff=True)
    officer.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="bots", codename__in=("view_turn", "view_conversation")
        )
    )
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    client = Client()
    client.force_login(officer)
    return client, turn_hr, turn_it


def test_officer_lists_and_opens_only_turns_of_assigned_bots(scenario) -> None:
    client, turn_hr, turn_it = scenario
    # The turn list shows the HR turn only
    listing = client.get(reverse("admin:bots_turn_changelist")).content.decode()
    assert reverse("admin:bots_turn_change", args=[turn_hr.pk]) in listing
    assert reverse("admin:bots_turn_change", args=[turn_it.pk]) not in listing
    # The IT turn and its conversation answer 404, with or without a reason, unlogged
    for url in (
        reverse("admin:bots_turn_change", args=[turn_it.pk]),
        reverse("admin:bots_conversation_change", args=[turn_it.conversation_id]),
    ):
        assert open_with_reason(client, url).status_code == 404
        assert client.get(url).status_code == 404
    conversations = client.get(reverse("admin:bots_conversation_changelist")).content.decode()
    assert "IT助手" not in conversations and "HR助手" in conversations
    assert not AccessLog.objects.exists()


def test_opening_an_assigned_turn_asks_why_and_logs_it(scenario) -> None:
    client, turn_hr, _ = scenario
    url = reverse("admin:bots_turn_change", args=[turn_hr.pk])
    # Without a reason: the question form, no answer text, nothing logged
    ask = client.get(url)
    assert ask.status_code == 200 and "access-reason-form" in ask.content.decode()
    assert "年假五天" not in ask.content.decode() and not AccessLog.objects.exists()
    # With a reason: the transcript, and one access-log row naming officer, turn and reason
    opened = open_with_reason(client, url)
    assert opened.status_code == 200 and "年假五天" in opened.content.decode()
    (entry,) = AccessLog.objects.all()
    assert (entry.username, entry.action, entry.object_type, entry.object_id, entry.reason) == (
        "officer_a",
        AccessLog.Action.VIEW,
        "bots.turn",
        str(turn_hr.pk),
        REASON["reason"],
    )


def test_superuser_sees_every_bot_and_is_still_logged(scenario, admin_client) -> None:
    _, turn_hr, turn_it = scenario
    listing = admin_client.get(reverse("admin:bots_turn_changelist")).content.decode()
    assert all(
        reverse("admin:bots_turn_change", args=[t.pk]) in listing for t in (turn_hr, turn_it)
    )
    opened = admin_client.get(reverse("admin:bots_turn_change", args=[turn_it.pk]))
    assert opened.status_code == 200 and "重启路由器" in opened.content.decode()
    (entry,) = AccessLog.objects.all()
    assert entry.username == "admin" and entry.object_id == str(turn_it.pk)

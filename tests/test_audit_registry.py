"""The bots side of audit: registered by bots at start-up, refused loudly when missing.

Audit never imports bots (README, "Layers"); officer scope, exports and retention reach the
bots' data only through what `BotsConfig.ready()` registers in `apps.audit.registry`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from io import StringIO

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.utils import timezone

from apps.audit import registry
from apps.audit.models import AccessLog, ReviewCase
from apps.audit.selectors import bots_reviewable_by
from apps.audit.services.review import review_scope_set
from apps.bots import transcripts
from apps.bots.models import Bot, Conversation, Turn


def test_bots_registers_its_side_at_start_up():
    # Given Django set up (every AppConfig.ready() has run)
    side = registry.bot_side_get()
    # Then audit sees the bots' own model and functions, not copies of them
    assert side.bot_model is Bot
    assert side.turns_for_user is transcripts.turns_for_user
    assert side.turn_export_record is transcripts.turn_export_record
    assert side.turns_purge is transcripts.turns_purge
    assert set(side.turn_purged_fields) >= {"question", "answer", "reasoning", "response_url"}


def test_audit_without_the_bots_side_refuses_loudly(monkeypatch):
    # Given no bots side registered (apps.bots left out of INSTALLED_APPS)
    monkeypatch.setattr(registry, "_registered", [])
    # When audit needs the bots
    # Then it says what is missing instead of scoping officers to nothing
    with pytest.raises(ImproperlyConfigured, match=r"apps\.bots"):
        bots_reviewable_by(user=AnonymousUser())


def test_a_later_registration_replaces_the_earlier(monkeypatch):
    monkeypatch.setattr(registry, "_registered", [])
    first = transcripts.transcripts_side()
    second = dataclasses.replace(first, turn_purged_fields=("question",))
    registry.bot_side_register(side=first)
    registry.bot_side_register(side=second)
    assert registry.bot_side_get() is second


def _turn(bot: Bot, msgid: str, *, days_old: int, status: str = Turn.Status.ANSWERED) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(
        bot=bot, chat_type="single", chat_id="", userid="zhaoliu"
    )
    return Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=msgid,
        stream_id=f"s-{msgid}",
        question="问题",
        answer="回答",
        reasoning="想法",
        response_url="https://example.invalid/once",
        status=status,
        received_at=timezone.now() - dt.timedelta(days=days_old),
    )


@pytest.mark.django_db
def test_turns_purge_blanks_only_expired_terminal_turns_outside_open_cases(make_bot):
    # Given turns of one bot: expired, recent, still generating, and under an open case
    bot = make_bot(slug="purge-side")
    expired = _turn(bot, "old", days_old=40)
    recent = _turn(bot, "new", days_old=1)
    running = _turn(bot, "running", days_old=40, status=Turn.Status.GENERATING)
    held = _turn(bot, "held", days_old=40)
    ReviewCase.objects.create(turn=held, bot=bot, action="flag")
    # When the bots side purges what is older than 30 days, one at a time
    cutoff = timezone.now() - dt.timedelta(days=30)
    first = transcripts.turns_purge(bot=bot, cutoff=cutoff, limit=1)
    second = transcripts.turns_purge(bot=bot, cutoff=cutoff, limit=1)
    # Then only the expired, finished turn outside an open case lost its content
    assert first == [expired.pk]
    assert second == []
    expired.refresh_from_db()
    assert (expired.question, expired.answer, expired.reasoning, expired.response_url) == (
        "",
        "",
        "",
        "",
    )
    for kept in (recent, running, held):
        kept.refresh_from_db()
        assert kept.question == "问题" and kept.answer == "回答"


@pytest.mark.django_db
def test_the_turns_export_is_scoped_and_written_by_the_bots_side(make_bot, tmp_path, admin_user):
    # Given an officer assigned to one of two bots, each with a turn
    hr, it = make_bot(slug="hr"), make_bot(slug="it", name="IT助手")
    mine, _theirs = _turn(hr, "hr-1", days_old=0), _turn(it, "it-1", days_old=0)
    officer = User.objects.create_user("officer-turns", is_staff=True)
    # (through the service: the permission is a migration's row, which a flush removes)
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    # When the officer's turns are exported
    out = tmp_path / "turns"
    call_command(
        "audit_export",
        "turns",
        "--out",
        str(out),
        "--user",
        "officer-turns",
        "--reason",
        "监管调取 2024-18",
        stdout=StringIO(),
    )
    # Then the file holds the assigned bot's turn only, as the bots side writes it
    lines = (out / "turns.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [transcripts.turn_export_record(mine)]
    assert json.loads(lines[0])["bot"] == "hr" and json.loads(lines[0])["question"] == "问题"
    # And the export was access-logged against that turn
    logged = AccessLog.objects.filter(action="export", username="officer-turns")
    assert list(logged.values_list("object_type", "object_id")) == [("bots.turn", str(mine.pk))]

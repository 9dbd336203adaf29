"""Retention: expired content is purged, holds and open cases keep it, the chain verifies."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.utils import timezone

from apps.audit.models import (
    ArchivedMessage,
    ArchiveSource,
    AuditPolicy,
    LedgerEntry,
    ReviewCase,
)
from apps.audit.services.ledger import content_fingerprint, ledger_record_turn, ledger_verify
from apps.audit.services.retention import retention_days_effective, retention_purge
from apps.bots.models import Conversation, Turn

pytestmark = pytest.mark.django_db


def turn(bot, number: int, *, days_old: int) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(
        bot=bot, chat_type="single", chat_id="", userid="wangwu"
    )
    created = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=f"{bot.slug}-{number}",
        stream_id=f"{bot.slug}-s{number}",
        question=f"问题{number}",
        answer=f"回答{number}",
        status=Turn.Status.ANSWERED,
        received_at=timezone.now() - dt.timedelta(days=days_old),
    )
    ledger_record_turn(turn=created)
    return created


def test_expired_turns_are_purged_and_the_chain_still_verifies(make_bot) -> None:
    # Given a bot under a 30-day policy, a bot under legal hold, and turns old and new
    kept_30, held = make_bot(), make_bot(name="法务", slug="legal")
    AuditPolicy.objects.create(name="30天", retention_days=30).bots.add(kept_30)
    AuditPolicy.objects.create(name="诉讼保全", retention_days=1, legal_hold=True).bots.add(held)
    old, recent, under_review = (
        turn(kept_30, n, days_old=d) for n, d in [(1, 40), (2, 5), (3, 40)]
    )
    held_turn = turn(held, 4, days_old=400)
    # (the old one was blocked: the model's withheld words and the employee's comment are
    # content too)
    Turn.objects.filter(pk=old.pk).update(
        withheld_answer="被拦截的原文", feedback_detail={"type": 2, "content": "不准确"}
    )
    ReviewCase.objects.create(turn=under_review, bot=kept_30, action="flag")
    recorded = LedgerEntry.objects.get(ref=f"bots.turn:{old.pk}")
    assert recorded.payload["question_hmac"] == content_fingerprint("问题1")
    assert "问题1" not in str(recorded.payload)
    # When retention runs
    result = retention_purge()
    # Then only the expired turn without an open case loses its text
    assert (result.turns, result.ledger_entries) == (1, 1)
    old.refresh_from_db()
    assert (old.question, old.answer, old.status) == ("", "", Turn.Status.ANSWERED)
    assert (old.withheld_answer, old.feedback_detail) == ("", {})
    for untouched in (recent, under_review, held_turn):
        untouched.refresh_from_db()
        assert untouched.question and untouched.answer
    # And the purge is in the ledger, and the whole chain (turn entries too) still verifies
    purge = LedgerEntry.objects.get(kind=LedgerEntry.Kind.PURGE)
    assert purge.payload["ids"] == [old.pk] and purge.payload["retention_days"] == 30
    assert ledger_verify().ok
    # And a second run has nothing left to do
    assert retention_purge().ledger_entries == 0


def test_expired_archived_messages_lose_text_and_media(
    settings, tmp_path: Path, django_capture_on_commit_callbacks
) -> None:
    settings.MEDIA_ROOT = str(tmp_path)
    source = ArchiveSource.objects.create(name="总部", corp_id="ww1", secret="s")
    AuditPolicy.objects.create(name="存档3天", retention_days=3).archive_sources.add(source)
    media = tmp_path / "archive" / "a.jpg"
    media.parent.mkdir(parents=True)
    media.write_bytes(b"\xff\xd8 image")
    old, recent = (
        ArchivedMessage.objects.create(
            source=source, msgid=msgid, seq=seq, publickey_ver=1, action="send", sender="zhangsan",
            tolist=["lisi"], msgtime=timezone.now() - dt.timedelta(days=days), msgtype=msgtype,
            text=text, raw={"text": {"content": text}}, media_path=path,
        )
        for msgid, seq, days, msgtype, text, path in [
            ("m1", 1, 10, "image", "", "archive/a.jpg"),
            ("m2", 2, 1, "text", "还在保留期", ""),
        ]
    )  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        result = retention_purge()
    assert (result.messages, result.media_files) == (1, 1)
    old.refresh_from_db()
    assert old.purged_at is not None and old.raw == {} and old.media_path == ""
    assert old.msgid == "m1" and old.sender == "zhangsan"  # who/when stay, content goes
    assert not media.exists()
    recent.refresh_from_db()
    assert recent.text == "还在保留期" and recent.purged_at is None
    assert ledger_verify().ok


def test_longest_retention_wins_and_any_hold_keeps_everything() -> None:
    short = AuditPolicy(name="a", retention_days=7)
    long = AuditPolicy(name="b", retention_days=90)
    hold = AuditPolicy(name="c", legal_hold=True, enabled=False)
    assert retention_days_effective([short, long]) == 90
    assert retention_days_effective([short, long, hold]) is None
    assert retention_days_effective([AuditPolicy(name="d")]) is None

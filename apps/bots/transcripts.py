"""Bot transcripts as compliance sees them: officer-scoped reads, the export record, the
retention purge.

They live with the turns they read and write; audit, one layer below, gets them through the
side that `BotsConfig.ready()` registers (`apps.audit.registry`), so the officer scope, the
export and retention stay audit's while the knowledge of turns stays here.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db.models import Q, QuerySet

from apps.audit.models import ReviewCase
from apps.audit.registry import BotSide
from apps.audit.selectors import bots_reviewable_by
from apps.bots.conversation_files import ConversationFile
from apps.bots.models import Bot, Conversation, Turn

# Every field that can hold what an employee or the model wrote (feedback may carry a
# comment), with its purged value.
_TURN_PURGED: dict[str, Any] = {
    "question": "",
    "question_masked": "",
    "answer": "",
    "reasoning": "",
    "withheld_answer": "",
    "feedback_detail": {},
    # Not content, but a bearer capability into the chat; normally cleared once used.
    "response_url": "",
    "longconn_rest": "",  # the part of a long answer still to push: answer text too
}
TURN_PURGED_FIELDS = tuple(_TURN_PURGED)


def turns_for_user(*, user: Any) -> QuerySet[Turn]:
    """Bot turns (transcripts) of the bots assigned to `user`, for scoped transcript views."""
    turns = Turn.objects.all()
    if user.is_superuser:
        return turns
    return turns.filter(bot__in=bots_reviewable_by(user=user))


def conversations_for_user(*, user: Any) -> QuerySet[Conversation]:
    """Bot conversations of the bots assigned to `user`."""
    conversations = Conversation.objects.all()
    if user.is_superuser:
        return conversations
    return conversations.filter(bot__in=bots_reviewable_by(user=user))


def turn_for_user(*, user: Any, turn_id: int) -> Turn | None:
    """The turn if `user` may open it in the admin: `bots.view_turn` and the bot assigned."""
    if not user.is_active or not user.is_staff or not user.has_perm("bots.view_turn"):
        return None
    return turns_for_user(user=user).filter(pk=turn_id).first()


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def turn_export_record(turn: Turn) -> dict[str, Any]:
    conversation = turn.conversation
    record: dict[str, Any] = {
        "type": "turn",
        "id": turn.pk,
        "bot": turn.bot.slug,
        "msgid": turn.msgid,
        "userid": conversation.userid,
        "chat_type": conversation.chat_type,
        "chat_id": conversation.chat_id,
        "question": turn.question,
        "answer": turn.answer,
        "status": turn.status,
        "received_at": _iso(turn.received_at),
        "finished_at": _iso(turn.finished_at),
    }
    if turn.msgtype == "file":  # the file an employee sent, which later answers may use
        record["file"] = (
            ConversationFile.objects.filter(turn=turn)
            .values("filename", "kind", "size_bytes", "status", "refusal", "text")
            .first()
        )
    return record


def _turns_expired(*, bot: Bot, cutoff: dt.datetime) -> QuerySet[Turn]:
    has_text = ~Q(**_TURN_PURGED)  # any of them not yet empty
    return (
        Turn.objects.filter(bot=bot, received_at__lt=cutoff, status__in=Turn.TERMINAL)
        .filter(has_text)
        .exclude(review_cases__status=ReviewCase.Status.OPEN)
    )


def turns_purge(*, bot: Bot, cutoff: dt.datetime, limit: int) -> list[int]:
    """Blank the content of up to `limit` expired turns; their ids (empty: none left)."""
    ids = list(
        _turns_expired(bot=bot, cutoff=cutoff).order_by("pk").values_list("pk", flat=True)[:limit]
    )
    if ids:
        Turn.objects.filter(pk__in=ids).update(**_TURN_PURGED)
        # A file's text is a source only while the message that carried it is kept.
        ConversationFile.objects.filter(turn_id__in=ids).delete()
    return ids


def transcripts_side() -> BotSide:
    """What audit needs of bots, registered by `BotsConfig.ready()`."""
    return BotSide(
        bot_model=Bot,
        turns_for_user=turns_for_user,
        turn_export_record=turn_export_record,
        turns_purge=turns_purge,
        turn_purged_fields=TURN_PURGED_FIELDS,
    )

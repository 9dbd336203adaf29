"""The test chat beside each bot in the admin: a question asked as a chosen employee (or as
an external user), through the same turn pipeline as WeCom's, the turn marked as a test.

The question enters through `mention_receive` like a callback's, so admission (allow-lists,
rate limit, policies), knowledge within the asker's audience, the model and the policy guard
run as they would for that person; only the door differs. Nothing goes to WeCom: the turn
has no response_url and no long-connection req_id, and the page reads the stream state the
worker writes for WeCom's refreshes.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from apps.audit.services.operator_audit import operator_audit_record
from apps.bots.models import Bot, Turn
from apps.bots.services.receive import mention_receive
from apps.bots.streams import stream_state_get
from apps.bots.thread import turns_thread
from wecom.messages import InboundMessage

logger = logging.getLogger(__name__)

# Test turns of one admin share one 1:1 thread per asker, apart from the employee's real
# chat (a separate conversation, so the employee's history is not the test's context).
TRIAL_CHAT_PREFIX = "admin-test:"
# Asks as someone outside the directory: only knowledge open to everyone applies.
EXTERNAL_USERID = "external-test-user"


def trial_turn_ask(
    *, bot: Bot, userid: str, question: str, actor: Any, request_id: str = ""
) -> Turn:
    """Ask `question` as `userid`; the turn, admitted (queued) or already rejected."""
    message = InboundMessage(
        msgid=f"admin-test-{uuid.uuid4().hex}",
        aibotid=bot.aibotid,
        chatid=f"{TRIAL_CHAT_PREFIX}{actor.pk}",
        chattype="single",
        userid=userid,
        response_url=None,
        msgtype="text",
        text=question,
        image_urls=(),
        quote=None,
        raw={},
    )
    with transaction.atomic():
        turn = mention_receive(bot=bot, message=message, received_at=timezone.now(), test=True)
        # Who asked what as whom is the admin's act: the question itself stays on the turn.
        operator_audit_record(
            actor=actor,
            action="bots.test_chat.ask",
            obj=turn,
            object_repr=f"{bot.slug} · {userid}",
            after={"bot": bot.slug, "userid": userid, "status": turn.status},
            request_id=request_id,
            only_changes=False,
        )
    return turn


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def trial_turn_state(*, turn: Turn) -> dict[str, Any]:
    """What the test chat shows of a turn: the answer so far, sources, policies, timings."""
    content = turn.answer
    if not turn.is_terminal:
        try:
            state = stream_state_get(turn.stream_id)
        except (RedisError, OSError):
            logger.warning("test turn %s: Redis unavailable", turn.pk)
            state = None
        content = state.content if state is not None else ""
    (bubbles,) = turns_thread([turn])
    return {
        "id": turn.pk,
        "status": turn.status,
        "status_label": str(turn.get_status_display()),
        "finished": turn.is_terminal,
        "content": content,
        "reasoning": turn.reasoning if turn.is_terminal else "",
        "rejection_reason": turn.rejection_reason,
        "fixed_reply_reason": str(turn.get_fixed_reply_reason_display())
        if turn.fixed_reply_reason
        else "",
        "error": turn.error,
        "finish_reason": turn.finish_reason,
        "sources": [
            {
                "number": citation.number,
                "title": citation.title,
                "heading": citation.heading,
                "knowledge_base": citation.knowledge_base,
                "score": citation.score,
                "passage": citation.passage,
            }
            for citation in bubbles.citations
        ],
        "decisions": [
            {
                "subject": hit.subject,
                "policy": hit.policy,
                "label": hit.label,
                "word": hit.word,
                "action": hit.action,
            }
            for hit in [*bubbles.question_hits, *bubbles.answer_hits]
        ],
        "timings": {
            "queued": _seconds(turn.received_at, turn.queued_at),
            "first_token": _seconds(turn.received_at, turn.first_token_at),
            "total": _seconds(turn.received_at, turn.finished_at),
        },
        "tokens": {"prompt": turn.prompt_tokens, "completion": turn.completion_tokens},
    }

"""A chat completion is a turn: the same admission, policies, queue and answer as WeCom's.

OpenAI's API is stateless (clients send the whole history), but the pipeline builds the
model's context from the conversation's own answered turns. So the last user message is
the question, and the context is the key's own conversation with the bot: one per key, or
one per key and `user` field when the client names its end users (a Wechaty bot passes
the group or contact id), so unrelated chats never share a history.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass

from django.utils import timezone

from apps.bots.models import Bot, Turn
from apps.bots.ratelimit import rate_limit_exceeded
from apps.bots.services.receive import mention_receive
from apps.bots.streams import deadline_from
from apps.directory.models import DirectoryUser
from apps.openai_api.models import ApiKey
from wecom.messages import InboundMessage

MSGID_PREFIX = "api:"
WAIT_MARGIN_SECONDS = 90.0


class Refusal(enum.Enum):
    """Why a request gets an error instead of an answer; each has its HTTP status."""

    RATE_LIMITED = 429
    NOT_ALLOWED = 403
    EMPTY = 400


# A rejected turn's reason (set by admission) and the error it becomes. A policy block is
# not here: its refusal text is the answer.
_REJECTIONS = {
    "rate_limited": Refusal.RATE_LIMITED,
    "in_flight": Refusal.RATE_LIMITED,
    "not_allowed": Refusal.NOT_ALLOWED,
    "empty": Refusal.EMPTY,
    "unsupported": Refusal.EMPTY,
}


@dataclass(frozen=True)
class Asker:
    """Who the key asks as: an employee of the directory, or an external user."""

    userid: str
    chat_id: str
    external: bool


def completion_asker(*, key: ApiKey, user: str = "") -> Asker | None:
    """The key's identity for the pipeline; None when its employee left the directory.

    An employee keeps their own userid (their audience, allow-lists and limits); an
    unbound key is an external user of its own. The chat id keeps the API's conversations
    apart from the employee's WeCom chats and, with `user`, from each other.
    """
    thread = f"api:{key.prefix}"
    if user:
        thread += ":" + hashlib.sha256(user.encode()).hexdigest()[:16]
    if key.userid:
        if not DirectoryUser.objects.filter(userid=key.userid).exists():
            return None
        return Asker(userid=key.userid, chat_id=thread, external=False)
    return Asker(userid=thread, chat_id=thread, external=True)


def key_rate_limited(*, key: ApiKey) -> bool:
    return rate_limit_exceeded(scope=f"apikey:{key.pk}", limit=key.rate_limit_per_minute)


def completion_receive(*, bot: Bot, asker: Asker, question: str) -> Turn:
    """Record the question as a turn on the "api" channel and enqueue its answer."""
    message = InboundMessage(
        msgid=f"{MSGID_PREFIX}{uuid.uuid4().hex}",
        aibotid=bot.aibotid,
        chatid=asker.chat_id,
        chattype="single",
        userid=asker.userid,
        response_url=None,
        msgtype="text",
        text=question,
        image_urls=(),
        quote=None,
        raw={},
    )
    return mention_receive(
        bot=bot,
        message=message,
        received_at=timezone.now(),
        channel=Turn.Channel.API,
        external=asker.external,
    )


def completion_refusal(*, turn: Turn) -> Refusal | None:
    """The error a rejected turn becomes, or None when its text is the answer."""
    if turn.status != Turn.Status.REJECTED:
        return None
    return _REJECTIONS.get(turn.rejection_reason)


def completion_deadline(*, turn: Turn) -> float:
    """Epoch seconds after which a client stops waiting for the turn's end.

    The sweeper fails a turn not answered within the stream window, so every turn has
    ended by then; the margin covers the sweep's own interval.
    """
    return deadline_from(turn.received_at.timestamp()) + WAIT_MARGIN_SECONDS


def finish_reason(*, turn: Turn) -> str:
    """OpenAI's finish reason for an ended turn."""
    if turn.rejection_reason == "policy_blocked" or turn.withheld_answer:
        return "content_filter"
    if turn.finish_reason == "length":
        return "length"
    return "stop"

"""Reads that are more than a filter: who may use a bot, what context a turn carries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Max, Q
from django.utils import timezone

from apps.audit.models import AuditPolicy
from apps.bots.models import Bot, Turn
from apps.directory.models import DirectoryUser


def bot_user_allowed(*, bot: Bot, userid: str) -> bool:
    """Empty allow-lists mean everyone; departments come from the employee directory."""
    if not bot.allowed_userids and not bot.allowed_departments:
        return True
    if userid in bot.allowed_userids:
        return True
    if not bot.allowed_departments:
        return False
    return DirectoryUser.objects.filter(
        userid=userid, departments__overlap=list(bot.allowed_departments)
    ).exists()


def bot_policies(*, bot: Bot) -> list[AuditPolicy]:
    return list(bot.audit_policies.filter(enabled=True).order_by("pk"))


def conversation_messages(
    *, turn: Turn, mask: Callable[[str], str] | None = None
) -> tuple[dict[str, str], ...]:
    """System prompt, the user's last N answered turns in this chat, then the question.

    A question's masked form is stored when it is admitted; `mask` rewrites the questions
    stored without one (asked while the bot had no policy) before the model sees them.
    """
    mask = mask or (lambda text: text)
    bot = turn.bot
    messages: list[dict[str, str]] = []
    if bot.system_prompt.strip():
        messages.append({"role": "system", "content": bot.system_prompt.strip()})
    if bot.context_turns:
        previous = (
            Turn.objects.filter(
                conversation_id=turn.conversation_id,
                status=Turn.Status.ANSWERED,
                received_at__lt=turn.received_at,
            )
            .exclude(pk=turn.pk)
            .order_by("-received_at")
            .values_list("question", "question_masked", "answer")[: bot.context_turns]
        )
        for question, masked, answer in reversed(list(previous)):
            messages.append({"role": "user", "content": masked or mask(question)})
            messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": turn.question_masked or mask(turn.question)})
    return tuple(messages)


@dataclass(frozen=True)
class DeliveryHealth:
    """One bot's delivery over the last day (the bot list and page show it)."""

    last_question_at: datetime | None = None
    last_answer_at: datetime | None = None
    stream_expiries: int = 0
    response_url_failures: int = 0
    failed: int = 0


DELIVERY_HEALTH_WINDOW = timedelta(hours=24)
DELIVERY_HEALTH_CACHE_SECONDS = 30


def bots_delivery_health() -> dict[int, DeliveryHealth]:
    """Every bot's delivery health in one pass over the last day's turns (by arrival time),
    kept 30 s so a list page with many bots costs one query at most twice a minute."""
    cached = cache.get("bots:delivery-health")
    if cached is not None:
        return {int(pk): _health_load(row) for pk, row in cached.items()}
    since = timezone.now() - DELIVERY_HEALTH_WINDOW
    rows = (
        Turn.objects.filter(received_at__gte=since, is_test=False)
        .values("bot_id")
        .annotate(
            last_question_at=Max("received_at"),
            last_answer_at=Max("finished_at", filter=Q(status=Turn.Status.ANSWERED)),
            # The stream window closed before the answer did: it went by response_url.
            stream_expiries=Count("id", filter=Q(response_url_used_at__isnull=False)),
            response_url_failures=Count("id", filter=Q(error__startswith=Turn.RESPONSE_URL_FAILED)),
            failed=Count("id", filter=Q(status=Turn.Status.FAILED)),
        )
        .order_by()
    )
    health = {row.pop("bot_id"): DeliveryHealth(**row) for row in rows}
    cache.set(
        "bots:delivery-health",
        {str(pk): _health_dump(value) for pk, value in health.items()},
        DELIVERY_HEALTH_CACHE_SECONDS,
    )
    return health


def _health_dump(health: DeliveryHealth) -> dict[str, object]:
    """The cache stores JSON: times as ISO strings."""
    row = asdict(health)
    for name in ("last_question_at", "last_answer_at"):
        row[name] = row[name].isoformat() if row[name] else None
    return row


def _health_load(row: dict[str, Any]) -> DeliveryHealth:
    for name in ("last_question_at", "last_answer_at"):
        row[name] = datetime.fromisoformat(row[name]) if row[name] else None
    return DeliveryHealth(**row)

"""Reads that are more than a filter: who may use a bot, what context a turn carries."""

from __future__ import annotations

from collections.abc import Callable

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

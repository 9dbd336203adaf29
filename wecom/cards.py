"""Template cards (doc 101031): the welcome card whose buttons ask suggested questions.

A button's key names its question by a digest, not by position, so a card sent before an
admin reordered or edited the questions never asks a different question than it showed.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

ASK_PREFIX = "ask:"
# WeCom shows at most 6 buttons on a button_interaction card.
MAX_BUTTONS = 6
MAX_BUTTON_CHARS = 20
MAX_TITLE_CHARS = 36
MAX_DESC_CHARS = 200


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def question_key(question: str) -> str:
    return ASK_PREFIX + hashlib.sha256(question.encode()).hexdigest()[:16]


def welcome_card(*, title: str, description: str, questions: list[str]) -> dict[str, Any]:
    """A `template_card` reply body: the welcome text and one button per suggested question."""
    card: dict[str, Any] = {
        "card_type": "button_interaction",
        "main_title": {"title": _cut(title, MAX_TITLE_CHARS)},
        "task_id": f"welcome-{secrets.token_hex(8)}",
        "button_list": [
            {"text": _cut(q, MAX_BUTTON_CHARS), "style": 1, "key": question_key(q)}
            for q in questions[:MAX_BUTTONS]
        ],
    }
    if description:
        card["main_title"]["desc"] = _cut(description, MAX_DESC_CHARS)
    return {"msgtype": "template_card", "template_card": card}


def clicked_question(event: dict[str, Any], questions: list[str]) -> str | None:
    """The suggested question a `template_card_event` button stands for; None if none does."""
    body = event.get("template_card_event")
    key = body.get("event_key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key.startswith(ASK_PREFIX):
        return None
    for question in questions:
        if question_key(question) == key:
            return question
    return None

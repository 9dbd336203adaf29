"""The welcome on `enter_chat` and the suggested-question buttons, the same in both modes.

A click on a suggestion is the employee asking that question: it becomes a turn through
`mention_receive` like a typed message (dedup by the event's msgid, admission, policies).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apps.bots.models import Bot, Turn
from wecom.cards import clicked_question, welcome_card
from wecom.messages import (
    MAX_CONTENT_BYTES,
    InboundEvent,
    InboundMessage,
    split_at_boundary,
    text_reply,
)


def welcome_payload(*, bot: Bot) -> dict[str, Any] | None:
    """A card when the bot has suggested questions, the welcome text otherwise, or nothing."""
    questions = bot.welcome_question_list()
    if questions:
        return welcome_card(
            title=bot.name, description=bot.welcome_message.strip(), questions=questions
        )
    if not bot.welcome_message.strip():
        return None
    welcome, _rest = split_at_boundary(bot.welcome_message, MAX_CONTENT_BYTES)
    return text_reply(welcome)


def card_click_receive(
    *, bot: Bot, event: InboundEvent, received_at: datetime, longconn_req_id: str = ""
) -> Turn | None:
    """The turn a suggested-question button asks; None for a button that is not one."""
    from apps.bots.services.receive import mention_receive

    question = clicked_question(event.event, bot.welcome_question_list())
    if question is None:
        return None
    response_url = event.raw.get("response_url")
    message = InboundMessage(
        msgid=event.msgid,
        aibotid=event.aibotid,
        chatid=event.chatid,
        chattype=event.chattype,
        userid=event.userid,
        response_url=response_url if isinstance(response_url, str) else None,
        msgtype="text",
        text=question,
        image_urls=(),
        quote=None,
        raw=event.raw,
    )
    return mention_receive(
        bot=bot, message=message, received_at=received_at, longconn_req_id=longconn_req_id
    )

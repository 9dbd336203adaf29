"""An Official Account's followers talk to its bot: receive, reply passively or push later.

WeChat waits 5 s for the callback's answer and retries it three times within 15 s. A message
becomes a turn once (`mention_receive` dedups by msgid); the callback waits a little for the
answer and returns it as the passive reply when it is ready and fits, else answers empty and
the push outbox sends it through the customer-service API. Exactly one of the two delivers:
each claims the turn's delivery in Redis first (`delivery_claim`), and the passive reply also
stamps `Turn.pushed_at`, so the push task skips the turn.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.bots.models import Turn
from apps.bots.services.push import PushError
from apps.bots.services.receive import mention_receive
from apps.bots.services.stream import reply_language
from apps.core.tokens import token_store
from apps.wechat.models import OfficialAccount
from wecom import mp
from wecom.messages import InboundMessage

logger = logging.getLogger(__name__)

PASSIVE = "passive"
PUSH = "push"
# Longer than the push outbox retries a turn (two days): a claim outlives every sender.
_CLAIM_SECONDS = 3 * 24 * 3600


def mp_client(*, account: OfficialAccount) -> mp.MpClient:
    return mp.MpClient(
        api_base=settings.WECHAT_API_BASE,
        app_id=account.app_id,
        app_secret=account.app_secret,
        store=token_store(),
    )


def follower_message_receive(
    *, account: OfficialAccount, inbound: mp.MpInbound, received_at: datetime
) -> Turn:
    """The follower's message as a turn of the account's bot, once per MsgId."""
    message = InboundMessage(
        msgid=f"mp:{account.app_id}:{inbound.msgid}",
        aibotid="",
        chatid=account.chat_id,
        chattype="single",
        userid=inbound.openid,
        response_url=None,
        # A voice message WeChat transcribed is answered like text; anything else is not.
        msgtype="text" if inbound.text is not None else inbound.msgtype,
        text=inbound.text,
        image_urls=(),
        quote=None,
        raw=dict(inbound.message._data),
    )
    return mention_receive(
        bot=account.bot,
        message=message,
        received_at=received_at,
        channel=Turn.Channel.MP,
        external=True,
    )


def delivery_claim(*, turn_id: int, by: str) -> bool:
    """Whether `by` (PASSIVE or PUSH) delivers the turn's answer: the first to ask wins.

    The winner keeps winning: WeChat retrying the message gets the passive reply again, and
    a push retried after a refusal carries on.
    """
    key = f"wechat-mp-delivery:{turn_id}"
    if cache.add(key, by, timeout=_CLAIM_SECONDS):
        return True
    return bool(cache.get(key) == by)


def turn_reply_text(turn: Turn) -> str:
    """What the follower sees of an ended turn: the answer, the refusal or an apology."""
    if turn.status == Turn.Status.FAILED or not turn.answer.strip():
        with reply_language():
            return _("Sorry, something went wrong while answering. Please try again later.")
    return turn.answer


def passive_wait_begin(*, turn_id: int, seconds: float) -> None:
    """The callback waits for this turn's answer: the push holds back until it gives up."""
    cache.set(_waiting_key(turn_id), 1, timeout=max(int(seconds) + 1, 1))


def passive_wait_end(*, turn_id: int) -> None:
    cache.delete(_waiting_key(turn_id))


def _waiting_key(turn_id: int) -> str:
    return f"wechat-mp-waiting:{turn_id}"


def passive_reply_take(*, turn: Turn) -> tuple[bool, str | None]:
    """(whether to stop waiting, the text to answer the callback with).

    The text is given when the turn ended and its answer fits one message, and the passive
    reply won the delivery; taking it stamps `pushed_at`. An ended turn whose answer is too
    long, or that the push already delivers, ends the wait without a text.
    """
    if not turn.is_terminal:
        return False, None
    text = turn_reply_text(turn)
    if len(text.encode("utf-8")) > mp.TEXT_MAX_BYTES:
        return True, None
    if not delivery_claim(turn_id=turn.pk, by=PASSIVE):
        return True, None
    Turn.objects.filter(pk=turn.pk, pushed_at__isnull=True).update(pushed_at=timezone.now())
    return True, text


def turn_push(turn: Turn) -> None:
    """The "mp" pusher: the answer through `message/custom/send`, in numbered parts.

    Parts already sent are counted in Redis, so a retry after a refused part does not send
    the earlier ones again.
    """
    if cache.get(_waiting_key(turn.pk)) is not None:
        # The callback is still waiting and will most likely answer passively: try again
        # in a moment (the push task's first retry is a second away).
        raise PushError(None, "the callback may still answer passively", retryable=True)
    if not delivery_claim(turn_id=turn.pk, by=PUSH):
        logger.info("turn %s was answered passively; nothing to push", turn.pk)
        return
    app_id = turn.conversation.chat_id.removeprefix("mp:")
    account = OfficialAccount.objects.filter(app_id=app_id).first()
    if account is None:
        raise PushError(None, f"no Official Account with AppID {app_id}")
    client = mp_client(account=account)
    parts = mp.text_parts(turn_reply_text(turn))
    sent_key = f"wechat-mp-sent:{turn.pk}"
    sent = int(cache.get(sent_key) or 0)
    for index, part in enumerate(parts):
        if index < sent:
            continue
        try:
            client.custom_text_send(openid=turn.conversation.userid, text=part)
        except mp.MpApiError as exc:
            raise PushError(exc.errcode, exc.errmsg, retryable=exc.retryable) from exc
        cache.set(sent_key, index + 1, timeout=_CLAIM_SECONDS)


def welcome_text(*, account: OfficialAccount) -> str:
    return account.welcome_text.strip()

"""Mini-program users: sign in through `jscode2session`, ask a bot, read the answer live."""

from __future__ import annotations

import logging
import uuid

from django.conf import settings
from django.utils import timezone

from apps.bots.models import Bot, Turn
from apps.bots.ratelimit import rate_limit_exceeded
from apps.bots.services.receive import mention_receive
from apps.core.tokens import token_store
from apps.wechat.auth import MiniProgramUser, tokens_issue
from apps.wechat.models import MiniProgram
from wecom import mp
from wecom.messages import InboundMessage

logger = logging.getLogger(__name__)


class LoginRefused(Exception):
    """The code was invalid, used or expired, or the mini program is unknown."""


def miniprogram_for(*, app_id: str = "") -> MiniProgram | None:
    """The enabled mini program with `app_id`; without one, the only enabled mini program."""
    programs = MiniProgram.objects.filter(enabled=True)
    if app_id:
        return programs.filter(app_id=app_id).first()
    found = list(programs[:2])
    return found[0] if len(found) == 1 else None


def miniprogram_login(*, code: str, app_id: str = "") -> dict[str, str]:
    """The JWT pair for the user behind a `wx.login` code (valid once, five minutes)."""
    program = miniprogram_for(app_id=app_id)
    if program is None:
        raise LoginRefused("unknown mini program")
    client = mp.MpClient(
        api_base=settings.WECHAT_API_BASE,
        app_id=program.app_id,
        app_secret=program.app_secret,
        store=token_store(),
    )
    try:
        session = client.jscode2session(code=code)
    except mp.MpApiError as exc:
        logger.info("mini program %s: login refused: %s", program.app_id, exc)
        raise LoginRefused(str(exc)) from exc
    return tokens_issue(app_id=program.app_id, openid=session.openid, unionid=session.unionid)


def miniprogram_rate_limited(*, program: MiniProgram, user: MiniProgramUser) -> bool:
    """Counts one question of the user; True when over the mini program's per-minute limit."""
    return rate_limit_exceeded(
        scope=f"miniprogram:{program.pk}:openid:{user.openid}",
        limit=program.rate_limit_per_minute,
    )


def miniprogram_chat_receive(
    *, program: MiniProgram, user: MiniProgramUser, bot: Bot, message: str, conversation: str
) -> Turn:
    """The question as a turn of `bot`, in the user's conversation (history per openid)."""
    inbound = InboundMessage(
        msgid=f"miniprogram:{uuid.uuid4().hex}",
        aibotid="",
        chatid=f"mini:{program.app_id}:{conversation}",
        chattype="single",
        userid=user.openid,
        response_url=None,
        msgtype="text",
        text=message,
        image_urls=(),
        quote=None,
        raw={"app_id": program.app_id, "openid": user.openid, "conversation": conversation},
    )
    return mention_receive(
        bot=bot,
        message=inbound,
        received_at=timezone.now(),
        channel=Turn.Channel.MINIPROGRAM,
        external=True,
    )

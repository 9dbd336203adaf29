"""Fixtures for the WeChat doors: WeChat's server API simulated on loopback, accounts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from wecom.crypto import generate_encoding_aes_key, generate_token
from wecom.simulator_mp import MpFollower, PassiveReply, WeChatServerSimulator

APP_ID = "wx0123456789abcdef"
APP_SECRET = "s3cret-of-the-account"


@pytest.fixture
def wechat_server(settings: Any) -> Iterator[WeChatServerSimulator]:
    with WeChatServerSimulator() as server:
        server.app_add(APP_ID, APP_SECRET)
        settings.WECHAT_API_BASE = server.base_url
        yield server


@pytest.fixture
def make_account(bot: Any) -> Any:
    from apps.wechat.models import OfficialAccount

    def make(**fields: Any) -> OfficialAccount:
        values: dict[str, Any] = {
            "name": "HR服务号",
            "slug": "hr-mp",
            "app_id": APP_ID,
            "app_secret": APP_SECRET,
            "token": generate_token(),
            "encoding_aes_key": generate_encoding_aes_key(),
            "mode": OfficialAccount.Mode.SAFE,
            "welcome_text": "欢迎关注",
            "bot": bot,
        }
        values.update(fields)
        return OfficialAccount.objects.create(**values)

    return make


def follower_of(
    account: Any, *, base_url: str = "", server: WeChatServerSimulator | None = None, **kwargs: Any
) -> MpFollower:
    return MpFollower(
        callback_url=base_url + account.callback_path(),
        token=account.token,
        encoding_aes_key=account.encoding_aes_key,
        app_id=account.app_id,
        mode=account.mode,
        server=server,
        **kwargs,
    )


def client_send(client: Any, follower: MpFollower, xml: str, **kwargs: Any) -> PassiveReply:
    """The follower's message through Django's test client (no live server needed)."""
    query, body = follower.signed(xml, **kwargs)
    response = client.post(f"{follower.callback_url}?{query}", data=body, content_type="text/xml")
    text = response.content.decode()
    return PassiveReply(
        status=response.status_code,
        body=text,
        content=follower.reply_content(response.status_code, text),
    )

"""Official Account answers from the real worker: passive when in time, pushed when not."""
# ruff: noqa: F811 - pytest fixtures imported from tests.wechat are redefined as arguments

from __future__ import annotations

import time

import pytest

from apps.bots.models import Turn
from tests.conftest import turn_terminal
from tests.wechat import follower_of, make_account, wechat_server  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture
def account(make_account, bot):
    bot.max_tokens = 8
    bot.save(update_fields=["max_tokens"])
    return make_account()


def test_answer_ready_in_time_is_the_passive_reply(
    live_server,
    account,
    wechat_server,
    start_worker,
    settings,
):
    # Generous here: the assertion is that a ready answer goes back passively and only once;
    # how fast the shared test machine writes it is not.
    settings.WECHAT_PASSIVE_REPLY_SECONDS = 120
    start_worker(WECHAT_API_BASE=wechat_server.base_url)
    follower = follower_of(account, base_url=live_server.url, server=wechat_server)
    msgid = follower.new_msgid()
    reply = follower.send(follower.text_xml("What is an annual leave?", msgid=msgid), timeout=150)
    turn = turn_terminal(f"mp:{account.app_id}:{msgid}")
    assert turn.status == Turn.Status.ANSWERED
    assert reply.content == turn.answer and turn.answer
    assert turn.pushed_at is not None
    time.sleep(1.0)  # the push task ran after the end and must have sent nothing
    assert wechat_server.sent == []


def test_slow_answer_goes_out_through_custom_send(
    live_server,
    account,
    wechat_server,
    start_worker,
    settings,
):
    settings.WECHAT_PASSIVE_REPLY_SECONDS = 0.5
    follower = follower_of(account, base_url=live_server.url, server=wechat_server)
    msgid = follower.new_msgid()
    reply = follower.send(follower.text_xml("What is an annual leave?", msgid=msgid))
    assert (reply.status, reply.body) == (200, "success")
    start_worker(WECHAT_API_BASE=wechat_server.base_url)  # too late for the passive reply
    (sent,) = wechat_server.wait_sent(1, timeout=120)
    turn = turn_terminal(f"mp:{account.app_id}:{msgid}")
    assert turn.status == Turn.Status.ANSWERED
    assert (sent.openid, sent.text) == (follower.openid, turn.answer)
    deadline = time.monotonic() + 10
    while Turn.objects.get(pk=turn.pk).pushed_at is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)

"""The Official Account callback: signatures, modes, passive replies, dedup, the push."""
# ruff: noqa: F811 - pytest fixtures imported from tests.wechat are redefined as arguments

from __future__ import annotations

import pytest

from apps.bots.models import Conversation, Turn
from apps.bots.services.push import turn_push
from apps.wechat.models import OfficialAccount
from apps.wechat.services.official_account import follower_message_receive
from tests.wechat import client_send, follower_of, make_account, wechat_server  # noqa: F401
from wecom import mp
from wecom.simulator_mp import MpFollower

# The callback's database work runs on the event loop's thread pool, on connections of
# its own: what a test writes must be committed for it to see.
pytestmark = pytest.mark.django_db(transaction=True)

MODES = [mode.value for mode in OfficialAccount.Mode]


@pytest.fixture
def account(make_account):
    return make_account()


@pytest.fixture(autouse=True)
def _short_wait(settings):
    # No worker runs here: an admitted question is never answered within the wait.
    settings.WECHAT_PASSIVE_REPLY_SECONDS = 0.3


def test_url_verification_echoes_when_signed(client, account):
    follower = follower_of(account)
    query, _body = follower.signed("")
    response = client.get(f"{follower.callback_url}?{query}&echostr=hello123")
    assert response.status_code == 200
    assert response.content == b"hello123"


def test_url_verification_with_a_bad_signature_is_403(client, account):
    follower = follower_of(account)
    query, _body = follower.signed("", bad_signature=True)
    response = client.get(f"{follower.callback_url}?{query}&echostr=hello123")
    assert response.status_code == 403
    assert b"hello123" not in response.content


@pytest.mark.parametrize("mode", MODES)
def test_bad_signature_is_403_and_nothing_is_stored(client, make_account, mode):
    follower = follower_of(make_account(mode=mode))
    reply = client_send(client, follower, follower.text_xml("你好"), bad_signature=True)
    assert reply.status == 403
    assert not Turn.objects.exists()


def test_wrong_msg_signature_in_safe_mode_is_403(client, account):
    follower = follower_of(account)
    query, body = follower.signed(follower.text_xml("你好"))
    query = query.replace("msg_signature=", "msg_signature=0")
    response = client.post(f"{follower.callback_url}?{query}", data=body, content_type="text/xml")
    assert response.status_code == 403
    assert not Turn.objects.exists()


def test_plaintext_post_to_a_safe_mode_account_is_400(client, account):
    plain = MpFollower(
        callback_url=account.callback_path(),
        token=account.token,
        encoding_aes_key=account.encoding_aes_key,
        app_id=account.app_id,
        mode=mp.MODE_PLAINTEXT,
    )
    reply = client_send(client, plain, plain.text_xml("你好"))
    assert reply.status == 400
    assert not Turn.objects.exists()


def test_ciphertext_for_another_app_id_is_400(client, account):
    stranger = follower_of(account)
    stranger.app_id = "wxSomeoneElse00000"
    stranger._crypto = MpFollower(
        callback_url="",
        token=account.token,
        encoding_aes_key=account.encoding_aes_key,
        app_id="wxSomeoneElse00000",
        mode=mp.MODE_SAFE,
    )._crypto
    reply = client_send(client, stranger, stranger.text_xml("你好"))
    assert reply.status == 400
    assert not Turn.objects.exists()


def test_unknown_or_disabled_account_is_404(client, make_account):
    account = make_account(enabled=False)
    follower = follower_of(account)
    assert client_send(client, follower, follower.text_xml("你好")).status == 404


@pytest.mark.parametrize("mode", MODES)
def test_a_refusal_is_answered_passively_in_every_mode(client, make_account, mode):
    account = make_account(mode=mode)
    follower = follower_of(account)
    reply = client_send(client, follower, follower.image_xml())
    assert reply.status == 200
    assert reply.content and "文字" in reply.content
    if mode != mp.MODE_PLAINTEXT:
        assert "<Encrypt>" in reply.body and "文字" not in reply.body
    turn = Turn.objects.get()
    assert turn.status == Turn.Status.REJECTED
    assert turn.channel == Turn.Channel.MP
    assert turn.pushed_at is not None  # delivered passively: the push skips it
    assert turn.msgid.startswith(f"mp:{account.app_id}:")


def test_followers_are_external_users_kept_per_account(client, account):
    follower = follower_of(account)
    client_send(client, follower, follower.image_xml())
    conversation = Conversation.objects.get()
    assert conversation.external is True
    assert conversation.userid == follower.openid
    assert conversation.chat_id == f"mp:{account.app_id}"
    assert conversation.chat_type == Conversation.ChatType.SINGLE


def test_slow_answer_gets_success_and_a_retry_makes_no_second_turn(client, account):
    follower = follower_of(account)
    xml = follower.text_xml("年假有几天？")
    first = client_send(client, follower, xml)
    again = client_send(client, follower, xml)  # WeChat retries the same MsgId
    assert (first.status, first.body, first.content) == (200, "success", None)
    assert (again.status, again.body) == (200, "success")
    turn = Turn.objects.get()
    assert turn.question == "年假有几天？"
    assert turn.status == Turn.Status.QUEUED
    assert turn.pushed_at is None


def test_subscribe_gets_the_welcome_text_and_no_turn(client, account):
    follower = follower_of(account)
    reply = client_send(client, follower, follower.event_xml("subscribe"))
    assert reply.content == "欢迎关注"
    assert not Turn.objects.exists()


def test_a_retry_after_the_passive_reply_gets_it_again_from_the_same_turn(client, account):
    follower = follower_of(account)
    xml = follower.image_xml()
    first = client_send(client, follower, xml)
    again = client_send(client, follower, xml)
    assert first.content and again.content == first.content
    assert Turn.objects.count() == 1


def test_subscribe_by_qr_code_gets_the_welcome_text_too(client, account):
    follower = follower_of(account)
    xml = follower.event_xml("subscribe").replace(
        "<EventKey></EventKey>", "<EventKey>qrscene_42</EventKey>"
    )
    assert "qrscene_42" in xml
    assert client_send(client, follower, xml).content == "欢迎关注"


def test_subscribe_without_welcome_and_other_events_get_success(client, make_account):
    follower = follower_of(make_account(welcome_text=""))
    assert client_send(client, follower, follower.event_xml("subscribe")).body == "success"
    assert client_send(client, follower, follower.event_xml("unsubscribe")).body == "success"
    assert not Turn.objects.exists()


# -- the push: message/custom/send ------------------------------------------------------------


def _ended_turn(account, follower, *, answer: str | None = None) -> Turn:
    """A turn of the account that ended without a passive reply (its callback gave up)."""
    from django.utils import timezone

    inbound = mp.MpCallbackCodec(
        token=account.token,
        encoding_aes_key=account.encoding_aes_key,
        app_id=account.app_id,
        mode=mp.MODE_PLAINTEXT,
    ).open(
        body=follower.image_xml().encode(),
        params=dict(signature=mp.signature_of(account.token, "1", "n"), timestamp="1", nonce="n"),
    )
    turn = follower_message_receive(account=account, inbound=inbound, received_at=timezone.now())
    if answer is not None:
        Turn.objects.filter(pk=turn.pk).update(answer=answer)
    return turn


def test_push_sends_the_answer_through_custom_send(account, wechat_server):
    follower = follower_of(account, server=wechat_server)
    wechat_server.follower_spoke(account.app_id, follower.openid)
    turn = _ended_turn(account, follower)
    assert turn_push(turn_id=turn.pk, final_try=True) is True
    (sent,) = wechat_server.sent
    assert (sent.openid, sent.text) == (follower.openid, turn.answer)
    assert Turn.objects.get(pk=turn.pk).pushed_at is not None


def test_push_skips_a_turn_answered_passively(client, account, wechat_server):
    follower = follower_of(account, server=wechat_server)
    assert client_send(client, follower, follower.image_xml()).content
    turn = Turn.objects.get()
    Turn.objects.filter(pk=turn.pk).update(pushed_at=None)  # even if the stamp were lost
    assert turn_push(turn_id=turn.pk, final_try=True) is True
    assert wechat_server.sent == []


def test_long_answer_is_pushed_in_numbered_parts(account, wechat_server):
    follower = follower_of(account, server=wechat_server)
    wechat_server.follower_spoke(account.app_id, follower.openid)
    answer = "\n\n".join(f"第{index}段。" + "内容" * 300 for index in range(4))
    turn = _ended_turn(account, follower, answer=answer)
    assert turn_push(turn_id=turn.pk, final_try=True) is True
    texts = [sent.text for sent in wechat_server.sent]
    assert len(texts) > 1
    assert all(len(text.encode()) <= mp.TEXT_MAX_BYTES for text in texts)
    assert texts[0].startswith(f"(1/{len(texts)}) 第0段")
    assert "".join(text.split(") ", 1)[1] for text in texts).replace("\n", "") == answer.replace(
        "\n", ""
    )


def test_push_after_48_hours_records_the_refusal(account, wechat_server):
    import time

    follower = follower_of(account, server=wechat_server)
    wechat_server.follower_spoke(account.app_id, follower.openid, at=time.time() - 49 * 3600)
    turn = _ended_turn(account, follower)
    assert turn_push(turn_id=turn.pk, final_try=False) is False
    turn.refresh_from_db()
    assert turn.push_error.startswith("45015")
    assert turn.pushed_at is None


def test_rate_limited_push_is_retried(account, wechat_server):
    from apps.bots.services.push import PushError

    follower = follower_of(account, server=wechat_server)
    wechat_server.follower_spoke(account.app_id, follower.openid)
    turn = _ended_turn(account, follower)
    wechat_server.rate_limited = True
    with pytest.raises(PushError) as refused:
        turn_push(turn_id=turn.pk, final_try=False)
    assert refused.value.errcode == mp.ERR_RATE_LIMITED and refused.value.retryable
    wechat_server.rate_limited = False
    assert turn_push(turn_id=turn.pk, final_try=False) is True
    assert len(wechat_server.sent) == 1


def test_expired_token_is_fetched_again_once(account, wechat_server):
    follower = follower_of(account, server=wechat_server)
    wechat_server.follower_spoke(account.app_id, follower.openid)
    first = _ended_turn(account, follower)
    assert turn_push(turn_id=first.pk, final_try=True) is True
    wechat_server.tokens_expire()
    second = _ended_turn(account, follower)
    assert turn_push(turn_id=second.pk, final_try=True) is True
    assert wechat_server.token_fetches == 2
    assert len(wechat_server.sent) == 2

"""The callback endpoint against the simulator: verification, bad input, dedup, events.

Given a bot in the database and the real server (pytest-django's live server), when the
simulator plays WeCom, then the answers are exactly what WeCom expects, and bad input
never reaches a 500.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import struct
import threading
import time

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from apps.bots.models import Turn
from apps.bots.streams import stream_state_get
from wecom.crypto import WeComCrypto

pytestmark = pytest.mark.django_db(transaction=True)


def _signed_post(live_server, bot, encrypt: str, *, body: bytes | None = None, token=None):
    crypto = WeComCrypto(token=token or bot.token, encoding_aes_key=bot.encoding_aes_key)
    timestamp, nonce = str(int(time.time())), "1234567890"
    raw = body if body is not None else json.dumps({"encrypt": encrypt}).encode()
    return httpx.post(
        live_server.url + bot.callback_path(),
        params={
            "msg_signature": crypto.signature(timestamp, nonce, encrypt),
            "timestamp": timestamp,
            "nonce": nonce,
        },
        content=raw,
        headers={"Content-Type": "application/json"},
        trust_env=False,
    )


def _raw_encrypt(bot, plaintext: bytes, *, pad: int | None = None) -> str:
    """Encrypt like WeCom but with a chosen (possibly wrong) padding."""
    key = base64.b64decode(bot.encoding_aes_key + "=")
    if pad is None:
        pad = 32 - len(plaintext) % 32
    padded = plaintext + bytes([pad]) * pad
    padded = padded[: len(padded) - len(padded) % 16] if len(padded) % 16 else padded
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def _frame(message: bytes, receive_id: bytes = b"", *, length: int | None = None) -> bytes:
    declared = len(message) if length is None else length
    return os.urandom(16) + struct.pack(">I", declared) + message + receive_id


def test_url_verification_answers_the_bare_echo(live_server, bot, simulator_for):
    echo = simulator_for(bot).verify_url()
    response = httpx.get(live_server.url + "/healthz", trust_env=False)
    assert response.status_code == 200
    assert echo.isdigit()  # the simulator checked it equals the plaintext exactly


def test_url_verification_content_type_is_plain_text(live_server, bot):
    crypto = WeComCrypto(token=bot.token, encoding_aes_key=bot.encoding_aes_key)
    echostr = crypto.encrypt(b"9876543210")
    response = httpx.get(
        live_server.url + bot.callback_path(),
        params={
            "msg_signature": crypto.signature("1700000000", "42", echostr),
            "timestamp": "1700000000",
            "nonce": "42",
            "echostr": echostr,
        },
        trust_env=False,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.content == b"9876543210"


def test_bad_signature_is_403_before_any_decryption(live_server, bot, caplog):
    # Garbage ciphertext: if the server decrypted first it would answer 400, not 403.
    with caplog.at_level(logging.WARNING, logger="apps.bots.views"):
        response = _signed_post(live_server, bot, "!!not-base64!!", token="wrongtoken")
    assert response.status_code == 403
    assert "bad signature" in caplog.text
    assert response.headers["X-Request-ID"] in {r.request_id for r in caplog.records}
    assert Turn.objects.count() == 0


@pytest.mark.parametrize(
    "case",
    ["not_base64", "bad_padding_value", "pad_zero", "wrong_receiveid", "bad_length", "not_json"],
)
def test_undecryptable_bodies_get_one_indistinguishable_400(live_server, bot, case):
    message = json.dumps({"msgid": "m1", "msgtype": "text"}).encode()
    encrypt = {
        "not_base64": lambda: "%%%%",
        "bad_padding_value": lambda: _raw_encrypt(bot, _frame(message), pad=33),
        "pad_zero": lambda: _raw_encrypt(bot, _frame(message) + b"\x00" * 7, pad=0),
        "wrong_receiveid": lambda: _raw_encrypt(bot, _frame(message, b"wwcorp123")),
        "bad_length": lambda: _raw_encrypt(bot, _frame(message, length=len(message) + 50)),
        "not_json": lambda: _raw_encrypt(bot, _frame(b"<xml>hello</xml>")),
    }[case]()
    response = _signed_post(live_server, bot, encrypt)
    assert response.status_code == 400
    assert response.text == "invalid request"
    assert Turn.objects.count() == 0


def test_non_json_request_body_is_400(live_server, bot):
    response = _signed_post(live_server, bot, "abc", body=b"not json at all")
    assert (response.status_code, response.text) == (400, "invalid request")


def test_malformed_message_json_is_400(live_server, bot, simulator_for):
    sim = simulator_for(bot)
    response = sim.post_message({"msgtype": "text", "text": {"content": "no msgid, no from"}})
    assert (response.status_code, response.text) == (400, "invalid request")


def test_oversized_body_is_413(live_server, bot):
    encrypt = base64.b64encode(os.urandom(70 * 1024)).decode()
    response = _signed_post(live_server, bot, encrypt)
    assert response.status_code == 413


@pytest.mark.parametrize("enabled", [True, False])
def test_unknown_or_disabled_bot_is_404(live_server, bot, enabled):
    if not enabled:
        bot.enabled = False
        bot.save()
        path = bot.callback_path()
    else:
        path = bot.callback_path().replace("/hr/", "/nope/")
    response = httpx.get(live_server.url + path, trust_env=False)
    assert response.status_code == 404
    assert "Traceback" not in response.text


def test_mention_is_acknowledged_with_a_stream_and_recorded(bot, simulator_for):
    sim = simulator_for(bot)
    message = sim.text_message("年假怎么算", userid="lisi", chatid="wrkSFfCgAA")
    started = time.monotonic()
    reply = sim.decrypt_reply(sim.post_message(message))
    elapsed = time.monotonic() - started
    assert reply["msgtype"] == "stream"
    assert reply["stream"]["finish"] is False
    turn = Turn.objects.get()
    assert turn.question == "年假怎么算"  # the @mention is stripped
    assert turn.stream_id == reply["stream"]["id"]
    assert turn.status == Turn.Status.QUEUED
    assert turn.conversation.chat_id == "wrkSFfCgAA"
    assert turn.queued_at is not None  # enqueued on commit
    assert elapsed < 5  # WeCom's assumed ack deadline; the model was never called inline


def test_same_msgid_four_times_at_once_gives_one_turn_and_one_stream(bot, simulator_for):
    sim = simulator_for(bot)
    message = sim.text_message("报销流程是什么", userid="wangwu", chatid="grp1")
    barrier = threading.Barrier(4)
    replies: list[dict] = []

    def deliver() -> None:
        barrier.wait()
        replies.append(sim.decrypt_reply(sim.post_message(message)))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(replies) == 4
    assert len({reply["stream"]["id"] for reply in replies}) == 1
    assert Turn.objects.count() == 1
    from wecom_ai.celery import app as celery_app
    from wecom_ai.queues import inference_queue

    # One generation enqueued, in the queue of the bot's model profile (counted over the
    # queue's priority lists: a fresh turn is not on the bare list name).
    with celery_app.connection_for_write() as conn:
        assert conn.default_channel._size(inference_queue(bot.model_profile_id)) == 1


def test_stream_refresh_returns_the_whole_content_from_redis(bot, simulator_for):
    from apps.bots.streams import StreamState, stream_state_set

    sim = simulator_for(bot)
    first = sim.decrypt_reply(sim.post_message(sim.text_message("hi", userid="u1")))
    stream_id = first["stream"]["id"]
    state = stream_state_get(stream_id)
    stream_state_set(stream_id, StreamState(content="年假按工龄", deadline=state.deadline))
    refresh = sim.decrypt_reply(
        sim.post_message(sim.stream_refresh_message(stream_id, userid="u1"))
    )
    assert refresh["stream"] == {"id": stream_id, "finish": False, "content": "年假按工龄"}


def test_unknown_stream_refresh_finishes_politely(bot, simulator_for):
    sim = simulator_for(bot)
    reply = sim.decrypt_reply(sim.post_message(sim.stream_refresh_message("nope", userid="u1")))
    assert reply["stream"]["finish"] is True
    assert reply["stream"]["content"]


def test_stream_past_the_deadline_is_finished_with_a_note(bot, simulator_for, settings):
    from apps.bots.streams import StreamState, stream_state_set

    sim = simulator_for(bot)
    first = sim.decrypt_reply(sim.post_message(sim.text_message("hi", userid="u1")))
    stream_id = first["stream"]["id"]
    stream_state_set(stream_id, StreamState(content="partial", deadline=time.time() - 60))
    reply = sim.decrypt_reply(sim.post_message(sim.stream_refresh_message(stream_id, userid="u1")))
    assert reply["stream"]["finish"] is True
    assert reply["stream"]["content"].startswith("partial")
    assert Turn.objects.get().stream_closed_at is not None


def test_enter_chat_gets_the_welcome_message(bot, simulator_for):
    sim = simulator_for(bot)
    reply = sim.decrypt_reply(sim.post_message(sim.event_message("enter_chat", userid="u1")))
    assert reply == {"msgtype": "text", "text": {"content": "欢迎使用HR助手"}}


def test_enter_chat_without_welcome_is_an_empty_200(make_bot, simulator_for):
    bot = make_bot(welcome_message="")
    sim = simulator_for(bot)
    response = sim.post_message(sim.event_message("enter_chat", userid="u1"))
    assert response.status_code == 200
    assert sim.decrypt_reply(response) is None


def test_feedback_event_is_stored_on_the_turn(bot, simulator_for):
    sim = simulator_for(bot)
    reply = sim.decrypt_reply(sim.post_message(sim.text_message("hi", userid="u1")))
    event = {"feedback_event": {"id": reply["stream"]["id"], "type": 2, "content": "不准确"}}
    response = sim.post_message(sim.event_message("feedback_event", userid="u1", event=event))
    assert response.status_code == 200
    turn = Turn.objects.get()
    assert turn.feedback == Turn.Feedback.INACCURATE
    assert turn.feedback_detail == {"content": "不准确"}


@pytest.mark.parametrize("kind", ["image", "file"])
def test_unsupported_types_get_a_polite_text(bot, simulator_for, kind):
    sim = simulator_for(bot)
    if kind == "image":
        message = sim.image_message("http://127.0.0.1:9/img.png", userid="u1")
    else:
        # Files are read in 1:1 chats (tests/test_conversation_files.py); WeCom sends none
        # from groups, and one that came anyway is declined like any other type.
        message = sim.text_message("x", userid="u1", chatid="grp-files")
        message["msgtype"] = "file"
        message.pop("text")
        message["file"] = {"url": "http://127.0.0.1:9/a.pdf"}
    reply = sim.decrypt_reply(sim.post_message(message))
    assert reply["stream"]["finish"] is True
    assert "文字" in reply["stream"]["content"]
    assert Turn.objects.get().rejection_reason == "unsupported"


def test_only_a_mention_asks_what_to_ask(bot, simulator_for):
    sim = simulator_for(bot)
    reply = sim.decrypt_reply(sim.post_message(sim.text_message("@HR助手", userid="u1")))
    assert reply["stream"]["finish"] is True
    assert Turn.objects.get().rejection_reason == "empty"


def test_rate_limit_rejects_politely(make_bot, simulator_for):
    bot = make_bot(rate_limit_per_minute=2)
    sim = simulator_for(bot)
    replies = [
        sim.decrypt_reply(sim.post_message(sim.text_message(f"q{i}", userid="fast")))
        for i in range(3)
    ]
    assert [r["stream"]["finish"] for r in replies] == [False, False, True]
    assert "稍" in replies[2]["stream"]["content"]
    other = sim.decrypt_reply(sim.post_message(sim.text_message("q", userid="slow")))
    assert other["stream"]["finish"] is False
    assert (
        Turn.objects.filter(status=Turn.Status.REJECTED, rejection_reason="rate_limited").count()
        == 1
    )


def test_users_outside_the_allow_list_are_rejected(make_bot, simulator_for):
    from apps.directory.models import DirectoryUser

    bot = make_bot(allowed_userids=["boss"], allowed_departments=["HR"])
    DirectoryUser.objects.create(userid="hr1", departments=["HR", "Finance"])
    DirectoryUser.objects.create(userid="eng1", departments=["Engineering"])
    sim = simulator_for(bot)
    finishes = {
        user: sim.decrypt_reply(sim.post_message(sim.text_message("q", userid=user)))["stream"][
            "finish"
        ]
        for user in ("boss", "hr1", "eng1", "stranger")
    }
    assert finishes == {"boss": False, "hr1": False, "eng1": True, "stranger": True}


def test_aibotid_mismatch_is_refused(make_bot, simulator_for):
    bot = make_bot(aibotid="the-real-bot")
    sim = simulator_for(bot, aibotid="another-bot")
    response = sim.post_message(sim.text_message("q", userid="u1"))
    assert (response.status_code, response.text) == (400, "invalid request")


def test_only_get_and_post(live_server, bot):
    response = httpx.put(live_server.url + bot.callback_path(), trust_env=False)
    assert response.status_code == 405


def test_random_bytes_never_give_500(live_server, bot):
    for _ in range(20):
        body = secrets.token_bytes(secrets.randbelow(2000))
        response = _signed_post(live_server, bot, base64.b64encode(body).decode())
        assert response.status_code in {400, 403}

"""The WeCom simulator against a tiny loopback fake bot that speaks the encrypted protocol."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from wecom.crypto import SignatureError, WeComCrypto, WeComCryptoError
from wecom.messages import (
    InboundEvent,
    InboundMessage,
    StreamRefresh,
    markdown_payload,
    parse_callback,
    stream_reply,
    strip_mention,
)
from wecom.outbound import ResponseUrlError, ResponseUrlPolicy, post_response_url
from wecom.simulator import (
    RESPONSE_URL_USED_ERRCODE,
    AskResult,
    ResponseUrlServer,
    SimulatorError,
    WeComSimulator,
)

TOKEN = "SimToken123"
# The simulator's response_url server listens on loopback over plain http (test mode only).
LOOPBACK = ResponseUrlPolicy.of(["127.0.0.1"], allow_http_loopback=True)
KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"

# What the fake bot shows on each refresh; the last one finishes the stream.
STREAM_STEPS = [
    "<think>plan",
    "<think>plan</think>Hello",
    "<think>plan</think>Hello world",
]


@dataclass
class FakeBotState:
    """What the fake bot saw, so tests can check the simulator's side of the protocol."""

    callbacks: list[dict[str, Any]] = field(default_factory=list)
    refreshes: dict[str, int] = field(default_factory=dict)
    questions: dict[str, str] = field(default_factory=dict)
    response_urls: dict[str, str | None] = field(default_factory=dict)
    mode: str = "normal"  # normal | never_finish | bad_signature | wrong_nonce | empty


class _FakeBotHandler(BaseHTTPRequestHandler):
    server: _FakeBotServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        query = self._query()
        try:
            echo = self.server.crypto.verify_url(
                msg_signature=query["msg_signature"],
                timestamp=query["timestamp"],
                nonce=query["nonce"],
                echostr=query["echostr"],
            )
        except (SignatureError, WeComCryptoError, KeyError):
            self._send(403, b"forbidden", "text/plain")
            return
        self._send(200, echo.encode(), "text/plain")

    def do_POST(self) -> None:
        query = self._query()
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            data = self.server.crypto.decrypt_callback(
                msg_signature=query["msg_signature"],
                timestamp=query["timestamp"],
                nonce=query["nonce"],
                body=body,
            )
        except (SignatureError, WeComCryptoError):
            self._send(403, b"", "text/plain")
            return
        state = self.server.state
        state.callbacks.append(data)
        payload = self._answer(parse_callback(data))
        if payload is None or state.mode == "empty":
            self._send(200, b"", "text/plain")
            return
        reply = self.server.crypto.encrypt_reply(payload, nonce=query["nonce"])
        if state.mode == "bad_signature":
            reply["msgsignature"] = "0" * 40
        if state.mode == "wrong_nonce":
            reply["nonce"] = "123"
        self._send(200, json.dumps(reply).encode(), "application/json")

    def _answer(self, callback: object) -> dict[str, Any] | None:
        state = self.server.state
        if isinstance(callback, InboundMessage):
            stream_id = f"stream-{callback.msgid}"
            state.refreshes[stream_id] = 0
            state.questions[stream_id] = strip_mention(callback.text or "")
            state.response_urls[stream_id] = callback.response_url
            return stream_reply(stream_id=stream_id)
        if isinstance(callback, StreamRefresh):
            count = state.refreshes[callback.stream_id] = state.refreshes[callback.stream_id] + 1
            finish = count >= len(STREAM_STEPS) and state.mode != "never_finish"
            content = STREAM_STEPS[min(count, len(STREAM_STEPS)) - 1]
            url = state.response_urls.get(callback.stream_id)
            if finish and url and state.questions[callback.stream_id] == "use response_url":
                post_response_url(url, markdown_payload("the rest of the answer"), policy=LOOPBACK)
            return stream_reply(
                stream_id=callback.stream_id, content=content, finish=finish, feedback_id="fb"
            )
        assert isinstance(callback, InboundEvent)
        return None


class _FakeBotServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeBotHandler)
        self.crypto = WeComCrypto(token=TOKEN, encoding_aes_key=KEY, receive_id="")
        self.state = FakeBotState()


@pytest.fixture
def fake_bot() -> Iterator[_FakeBotServer]:
    server = _FakeBotServer()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def response_server() -> Iterator[ResponseUrlServer]:
    with ResponseUrlServer() as server:
        yield server


@pytest.fixture
def simulator(
    fake_bot: _FakeBotServer, response_server: ResponseUrlServer
) -> Iterator[WeComSimulator]:
    host, port = fake_bot.server_address[:2]
    with WeComSimulator(
        callback_url=f"http://{host}:{port}/wecom/callback",
        token=TOKEN,
        encoding_aes_key=KEY,
        response_server=response_server,
        refresh_interval=0.02,
    ) as sim:
        yield sim


# --- URL verification and single callbacks ------------------------------------------------


def test_verify_url_gets_the_bare_echo(simulator: WeComSimulator) -> None:
    echo = simulator.verify_url()

    assert echo.isdigit()


def test_verify_url_fails_against_a_bot_with_another_token(fake_bot: _FakeBotServer) -> None:
    host, port = fake_bot.server_address[:2]
    with (
        WeComSimulator(
            callback_url=f"http://{host}:{port}/", token="other", encoding_aes_key=KEY
        ) as sim,
        pytest.raises(SimulatorError, match="HTTP 403"),
    ):
        sim.verify_url()


def test_post_message_uses_the_real_encoding(
    simulator: WeComSimulator, fake_bot: _FakeBotServer
) -> None:
    message = simulator.text_message("hi", userid="lisi")

    response = simulator.post_message(message)

    assert set(response.request.url.params) == {"msg_signature", "timestamp", "nonce"}
    assert set(json.loads(response.request.content)) == {"encrypt"}
    assert fake_bot.state.callbacks == [message]
    reply = simulator.decrypt_reply(response, response.request.url.params["nonce"])
    assert reply == stream_reply(stream_id=f"stream-{message['msgid']}")


def test_empty_reply_decrypts_to_none(simulator: WeComSimulator) -> None:
    response = simulator.post_message(simulator.event_message("enter_chat", userid="lisi"))

    assert simulator.decrypt_reply(response) is None


def test_reply_with_a_bad_signature_is_rejected(
    simulator: WeComSimulator, fake_bot: _FakeBotServer
) -> None:
    fake_bot.state.mode = "bad_signature"

    with pytest.raises(SignatureError):
        simulator.decrypt_reply(simulator.post_message(simulator.text_message("hi", userid="u")))


def test_reply_must_echo_the_callback_nonce(
    simulator: WeComSimulator, fake_bot: _FakeBotServer
) -> None:
    fake_bot.state.mode = "wrong_nonce"

    with pytest.raises(SimulatorError, match="nonce"):
        simulator.decrypt_reply(simulator.post_message(simulator.text_message("hi", userid="u")))


def test_error_status_is_a_simulator_error(simulator: WeComSimulator) -> None:
    response = httpx.Response(500, request=httpx.Request("POST", "http://x/?nonce=1"))

    with pytest.raises(SimulatorError, match="HTTP 500"):
        simulator.decrypt_reply(response)


# --- message builders -----------------------------------------------------------------------


def test_builders_produce_callbacks_the_parser_accepts(
    simulator: WeComSimulator, response_server: ResponseUrlServer
) -> None:
    group = parse_callback(simulator.text_message("hello", userid="u1", chatid="c1", msgid="m1"))
    assert isinstance(group, InboundMessage)
    assert group.chattype == "group" and group.chatid == "c1"
    assert group.text == "@RobotA hello"
    assert group.response_url == response_server.url_for("m1")
    assert group.aibotid == "sim-bot"

    single = parse_callback(simulator.text_message("hello", userid="u1"))
    assert isinstance(single, InboundMessage)
    assert single.chattype == "single" and single.chatid is None and single.text == "hello"

    mixed = parse_callback(
        simulator.mixed_message([("text", "看图"), ("image", "http://img")], userid="u1")
    )
    assert isinstance(mixed, InboundMessage)
    assert mixed.text == "看图" and mixed.image_urls == ("http://img",)

    voice = parse_callback(simulator.voice_message("语音", userid="u1"))
    assert isinstance(voice, InboundMessage) and voice.text == "语音"

    image = parse_callback(simulator.image_message("http://img", userid="u1"))
    assert isinstance(image, InboundMessage) and image.image_urls == ("http://img",)

    feedback = {"feedback_event": {"id": "fb", "type": 1}}
    event = parse_callback(simulator.event_message("feedback_event", userid="u1", event=feedback))
    assert isinstance(event, InboundEvent) and event.feedback == {"id": "fb", "type": 1}

    first = simulator.stream_refresh_message("s1", userid="u1")
    second = simulator.stream_refresh_message("s1", userid="u1")
    refresh = parse_callback(first)
    assert isinstance(refresh, StreamRefresh) and refresh.stream_id == "s1"
    assert first["msgid"] != second["msgid"]


# --- ask() ----------------------------------------------------------------------------------


def test_ask_follows_the_stream_to_the_end(
    simulator: WeComSimulator, fake_bot: _FakeBotServer
) -> None:
    result = simulator.ask("what is up", userid="lisi", chatid="group-1", timeout=10)

    assert isinstance(result, AskResult)
    assert result.finished
    assert result.stream_id == f"stream-{result.msgid}"
    assert result.content == result.raw_content == "<think>plan</think>Hello world"
    assert result.answer == "Hello world"
    assert result.think == "plan"
    assert result.refreshes == len(STREAM_STEPS)
    assert result.snapshots == STREAM_STEPS
    assert 0 < result.ack_seconds <= result.total_seconds
    assert result.first_content_seconds is not None
    assert result.ack_seconds < result.first_content_seconds <= result.total_seconds
    assert result.response_url_post is None

    callbacks = fake_bot.state.callbacks
    assert fake_bot.state.questions[result.stream_id] == "what is up"
    refreshes = [c for c in callbacks if c["msgtype"] == "stream"]
    assert len(refreshes) == len(STREAM_STEPS)
    assert len({c["msgid"] for c in callbacks}) == len(callbacks)  # every callback is new
    assert all(c["chatid"] == "group-1" and c["from"]["userid"] == "lisi" for c in refreshes)


def test_ask_gives_up_at_the_timeout(simulator: WeComSimulator, fake_bot: _FakeBotServer) -> None:
    fake_bot.state.mode = "never_finish"

    result = simulator.ask("question", timeout=0.5)

    assert not result.finished
    assert result.refreshes >= 3
    assert result.content == STREAM_STEPS[-1]
    assert result.total_seconds < 2.0


def test_ask_rejects_a_bot_that_does_not_stream(
    simulator: WeComSimulator, fake_bot: _FakeBotServer
) -> None:
    fake_bot.state.mode = "empty"

    with pytest.raises(SimulatorError, match="expected a stream reply"):
        simulator.ask("question", timeout=1)


def test_ask_collects_the_response_url_post(
    simulator: WeComSimulator, response_server: ResponseUrlServer
) -> None:
    result = simulator.ask("use response_url", timeout=10, response_wait=5)

    assert result.finished
    assert result.response_url_post == markdown_payload("the rest of the answer")
    # The bot already used this response_url: a second POST is refused.
    url = response_server.url_for(result.msgid)
    with pytest.raises(ResponseUrlError) as caught:
        post_response_url(url, markdown_payload("again"), policy=LOOPBACK)
    assert caught.value.errcode == RESPONSE_URL_USED_ERRCODE
    assert len(response_server.posts(result.msgid)) == 2


# --- ResponseUrlServer and post_response_url ------------------------------------------------


def test_response_url_is_usable_once(response_server: ResponseUrlServer) -> None:
    url = response_server.url_for("msg/1")

    first = post_response_url(url, markdown_payload("first"), policy=LOOPBACK)
    with pytest.raises(ResponseUrlError, match="errcode") as caught:
        post_response_url(url, markdown_payload("second"), policy=LOOPBACK)

    assert first == {"errcode": 0, "errmsg": "ok"}
    assert caught.value.errcode == RESPONSE_URL_USED_ERRCODE
    assert response_server.posts("msg/1") == [markdown_payload("first"), markdown_payload("second")]
    assert response_server.wait_for("msg/1", timeout=1) == markdown_payload("first")
    assert response_server.posts("other") == []


def test_response_url_keys_are_independent(response_server: ResponseUrlServer) -> None:
    with httpx.Client() as client:
        post_response_url(
            response_server.url_for("a"), markdown_payload("a"), client=client, policy=LOOPBACK
        )
        post_response_url(
            response_server.url_for("b"), markdown_payload("b"), client=client, policy=LOOPBACK
        )

    assert response_server.posts("a") == [markdown_payload("a")]
    assert response_server.posts("b") == [markdown_payload("b")]


def test_invalid_payload_is_refused_without_using_the_url(
    response_server: ResponseUrlServer,
) -> None:
    url = response_server.url_for("k")

    with pytest.raises(ResponseUrlError):
        post_response_url(url, {"msgtype": "text", "text": {"content": "x"}}, policy=LOOPBACK)
    with pytest.raises(ResponseUrlError):
        post_response_url(
            url,
            markdown_payload("x") | {"markdown": {"content": "x" * 20481}},
            policy=LOOPBACK,
        )

    assert post_response_url(url, markdown_payload("ok"), policy=LOOPBACK)["errcode"] == 0


def test_wait_for_times_out(response_server: ResponseUrlServer) -> None:
    with pytest.raises(TimeoutError):
        response_server.wait_for("nobody", timeout=0.05)


def test_wait_for_sees_a_post_from_another_thread(response_server: ResponseUrlServer) -> None:
    url = response_server.url_for("late")
    timer = threading.Timer(
        0.1, post_response_url, args=(url, markdown_payload("late")), kwargs={"policy": LOOPBACK}
    )
    timer.start()
    try:
        assert response_server.wait_for("late", timeout=5) == markdown_payload("late")
    finally:
        timer.join()


def test_post_response_url_http_and_transport_errors(response_server: ResponseUrlServer) -> None:
    with pytest.raises(ResponseUrlError, match="HTTP 404"):
        post_response_url(
            response_server.base_url + "/elsewhere", markdown_payload("x"), policy=LOOPBACK
        )

    closed = ResponseUrlServer()
    dead_url = closed.url_for("k")
    closed.close()
    with pytest.raises(ResponseUrlError, match="request failed"):
        post_response_url(dead_url, markdown_payload("x"), timeout=2, policy=LOOPBACK)


def test_post_response_url_rejects_non_json_answers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>")

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as client,
        pytest.raises(ResponseUrlError, match="non-JSON"),
    ):
        post_response_url(
            "https://qyapi.weixin.qq.com/r",
            markdown_payload("x"),
            client=client,
            policy=ResponseUrlPolicy(),
            resolver=lambda host, port: ["101.91.22.56"],  # any public address
        )

"""Issue 9, the callback boundary: what a sender of HTTP requests can make the web process do.

Bodies are refused before they are read (item 8), callbacks cannot be played again, one
bot never reads another bot's stream, and over-long fields are a 400, never a 503.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from django.conf import settings

from apps.audit.models import Action, AuditPolicy, PolicyWordList, SensitiveWordList
from apps.bots.models import Conversation, Turn
from apps.bots.streams import StreamState, stream_state_set
from wecom.messages import MAX_CONTENT_BYTES

# --- item 8: body size, at the ASGI layer the product runs (uvicorn → wecom_ai.asgi) --------

HUNDRED_MB = 100 * 1024 * 1024
_db = pytest.mark.django_db(transaction=True)


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


class _Client:
    """Feeds a body of `total` bytes in `chunk`-sized pieces and records what was read."""

    def __init__(self, *, total: int, chunk: int) -> None:
        self.total, self.chunk = total, chunk
        self.read = 0
        self.receive_calls = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        self.receive_calls += 1
        if self.read >= self.total:
            await asyncio.Future()  # the client stays connected; the app cancels this wait
        size = min(self.chunk, self.total - self.read)
        self.read += size
        return {"type": "http.request", "body": b"x" * size, "more_body": self.read < self.total}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.sent
        return starts[0]["status"]


def _serve(path: str, client: _Client, headers: list[tuple[bytes, bytes]] = ()) -> _Client:
    from wecom_ai.asgi import application

    asyncio.run(asyncio.wait_for(application(_scope(path, list(headers)), client.receive,
                                             client.send), timeout=120))  # fmt: skip
    return client


def test_declared_oversized_body_is_refused_before_a_byte_is_read():
    client = _Client(total=HUNDRED_MB, chunk=1024 * 1024)
    _serve("/wecom/aibot/hr/callback", client, [(b"content-length", str(HUNDRED_MB).encode())])
    assert client.status == 413
    assert client.receive_calls == 0


@pytest.mark.parametrize(
    ("path", "limit_setting"),
    [
        ("/wecom/aibot/hr/callback", "WECOM_CALLBACK_MAX_BYTES"),
        ("/admin/login/", "REQUEST_BODY_MAX_BYTES"),
        ("/api/search/", "REQUEST_BODY_MAX_BYTES"),
    ],
)
def test_chunked_oversized_body_is_cut_off_at_the_limit(path, limit_setting):
    limit = getattr(settings, limit_setting)
    chunk = 64 * 1024
    client = _serve(path, _Client(total=HUNDRED_MB, chunk=chunk))  # no Content-Length
    assert client.status == 413
    assert client.read <= limit + chunk  # not the 100 MB the client was ready to send


def test_invalid_content_length_is_400():
    client = _serve("/healthz", _Client(total=0, chunk=1), [(b"content-length", b"12x")])
    assert client.status == 400
    assert client.receive_calls == 0


@_db
def test_body_within_the_limit_still_reaches_django():
    body = 1024
    client = _serve("/wecom/aibot/nobody/callback", _Client(total=body, chunk=body),
                    [(b"content-length", str(body).encode())])  # fmt: skip
    assert client.status == 404  # the view ran: no such bot
    assert client.read == body


# --- replay ----------------------------------------------------------------------------------


@_db
@pytest.mark.parametrize("skew", [-400, 400])
def test_callback_with_a_timestamp_outside_five_minutes_is_refused(bot, simulator_for, skew):
    sim = simulator_for(bot)
    stale = str(int(time.time()) + skew)
    response = sim.post_message(sim.text_message("年假怎么算", userid="u1"), timestamp=stale)
    assert (response.status_code, response.text) == (403, "forbidden")
    assert not Turn.objects.exists()


@_db
def test_a_used_timestamp_and_nonce_cannot_carry_another_message(bot, simulator_for):
    sim = simulator_for(bot)
    timestamp, nonce = str(int(time.time())), "5550001234"
    first = sim.post_message(sim.text_message("第一问", userid="u1"), timestamp=timestamp,
                             nonce=nonce)  # fmt: skip
    assert first.status_code == 200
    second = sim.post_message(sim.text_message("第二问", userid="u1"), timestamp=timestamp,
                              nonce=nonce)  # fmt: skip
    assert (second.status_code, second.text) == (403, "forbidden")
    assert list(Turn.objects.values_list("question", flat=True)) == ["第一问"]


@_db
def test_redelivered_callback_still_gets_its_stream(bot, simulator_for):
    # WeCom redelivers a callback it got no answer to: same msgid, possibly same nonce.
    sim = simulator_for(bot)
    message = sim.text_message("年假怎么算", userid="u1")
    timestamp, nonce = str(int(time.time())), "5550004321"
    first = sim.decrypt_reply(sim.post_message(message, timestamp=timestamp, nonce=nonce))
    again = sim.decrypt_reply(sim.post_message(message, timestamp=timestamp, nonce=nonce))
    assert again["stream"]["id"] == first["stream"]["id"]
    assert Turn.objects.count() == 1


@_db
def test_replayed_feedback_event_is_recorded_once(bot, simulator_for):
    sim = simulator_for(bot)
    reply = sim.decrypt_reply(sim.post_message(sim.text_message("hi", userid="u1")))
    event = sim.event_message(
        "feedback_event", userid="u1", event={"feedback_event": {"id": reply["stream"]["id"],
                                                                 "type": 1}}
    )  # fmt: skip
    assert sim.post_message(event).status_code == 200
    first_at = Turn.objects.get().feedback_at
    assert first_at is not None
    assert sim.post_message(event).status_code == 200  # the same event (msgid) again
    assert Turn.objects.get().feedback_at == first_at


# --- stream refresh across bots --------------------------------------------------------------


@_db
def test_refresh_from_another_bot_never_reads_its_stream(make_bot, simulator_for):
    bot_a = make_bot(name="A", slug="bot-a")
    bot_b = make_bot(name="B", slug="bot-b")
    sim_a, sim_b = simulator_for(bot_a), simulator_for(bot_b)
    reply = sim_a.decrypt_reply(sim_a.post_message(sim_a.text_message("q", userid="u1")))
    stream_id = reply["stream"]["id"]
    secret = "A 的答案：绝密"
    stream_state_set(stream_id, StreamState(content=secret, deadline=time.time() + 300))

    stolen = sim_b.decrypt_reply(
        sim_b.post_message(sim_b.stream_refresh_message(stream_id, userid="u1"))
    )
    assert secret not in stolen["stream"]["content"]
    assert stolen["stream"]["finish"] is True

    refresh = sim_a.stream_refresh_message(stream_id, userid="u1")
    own = sim_a.decrypt_reply(sim_a.post_message(refresh))
    assert own["stream"]["content"] == secret


# --- over-long fields --------------------------------------------------------------------------


@_db
@pytest.mark.parametrize("field", ["userid", "msgid", "chatid"])
def test_over_long_ids_are_400_not_503(bot, simulator_for, field):
    sim = simulator_for(bot)
    message = sim.text_message("年假怎么算", userid="u1", chatid="grp")
    long_value = "x" * 300  # under the old parser's cap, over the database's column
    if field == "userid":
        message["from"]["userid"] = long_value
    else:
        message[field] = long_value
    response = sim.post_message(message)
    assert (response.status_code, response.text) == (400, "invalid request")
    assert not Turn.objects.exists() and not Conversation.objects.exists()


@_db
def test_over_long_refusal_text_is_cut_to_fit_the_stream(bot, simulator_for):
    refusal = "该问题涉及保密内容，无法回答。" * 2000  # about 90 KB
    policy = AuditPolicy.objects.create(name="long refusal", refusal_message=refusal)
    words = SensitiveWordList.objects.create(name="secret", words="绝密")
    PolicyWordList.objects.create(policy=policy, word_list=words, action=Action.BLOCK)
    policy.bots.add(bot)
    sim = simulator_for(bot)
    reply = sim.decrypt_reply(sim.post_message(sim.text_message("绝密文件", userid="u1")))
    content = reply["stream"]["content"]
    assert reply["stream"]["finish"] is True
    assert 0 < len(content.encode()) <= MAX_CONTENT_BYTES
    assert refusal.startswith(content)

"""Long-connection pieces on their own: frame parsing, the backoff, the send budget and media
decryption (the download goes to the simulator's HTTP side on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import random
import secrets

import httpx
import pytest

from wecom.longconn import (
    Ack,
    Backoff,
    Frame,
    FrameError,
    LongConnClient,
    MediaError,
    RateBudget,
    RateLimits,
    media_decrypt,
    media_download,
    parse_frame,
)
from wecom.longconn.media import media_encrypt
from wecom.simulator_longconn import LongConnSimulator


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[1]", "JSON object"),
        ('{"cmd": "ping"}', "no headers"),
        ('{"cmd": "ping", "headers": {"req_id": ""}}', "req_id must be a non-empty string"),
        ('{"cmd": "ping", "headers": {"req_id": 7}}', "req_id must be a non-empty string"),
        ('{"headers": {"req_id": "r"}}', "neither cmd nor an integer errcode"),
        ('{"headers": {"req_id": "r"}, "errcode": true}', "neither cmd nor an integer errcode"),
        ('{"cmd": 3, "headers": {"req_id": "r"}}', "cmd must be a non-empty string"),
        ('{"cmd": "x", "headers": {"req_id": "r"}, "body": []}', "body must be a JSON object"),
        ('{"cmd": "x", "headers": {"req_id": "' + "r" * 300 + '"}}', "longer than"),
    ],
)
def test_malformed_frames_raise_a_clear_frame_error(raw: str | bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        parse_frame(raw)


def test_frames_and_acks_round_trip() -> None:
    frame = Frame(cmd="aibot_msg_callback", req_id="r1", body={"chatid": "g", "msgtype": "text"})
    assert parse_frame(frame.to_json()) == frame
    assert frame.conversation_key == "g"
    ack = Ack(req_id="r1", errcode=846608, errmsg="expired")
    parsed = parse_frame(ack.to_json())
    assert parsed == ack
    assert isinstance(parsed, Ack) and not parsed.ok
    single = Frame(cmd="aibot_msg_callback", req_id="r2", body={"from": {"userid": "u1"}})
    assert single.conversation_key == "u1"
    kick = Frame(cmd="aibot_event_callback", req_id="r3", body={"event": {"eventtype": "x"}})
    assert kick.eventtype == "x"
    assert frame.eventtype is None


def test_client_repr_never_shows_the_secret() -> None:
    async def handler(frame: Frame, client: LongConnClient) -> None:
        pass

    client = LongConnClient(bot_id="b", secret="hunter2-secret", handler=handler)
    assert "hunter2" not in repr(client)
    assert client.url == "wss://openws.work.weixin.qq.com"


def test_backoff_doubles_from_one_second_and_caps_at_thirty() -> None:
    backoff = Backoff()
    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(1, 12)]
    for attempt, delay in enumerate(delays, start=1):
        base = min(30.0, 2.0 ** (attempt - 1))
        assert base * 0.8 <= delay <= min(30.0, base * 1.2)
    assert max(delays) <= 30.0
    assert Backoff(jitter=0.0).delay(1000) == 30.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_budget_keeps_a_reserve_and_frees_slots_as_the_window_slides() -> None:
    clock = FakeClock()
    limits = RateLimits(per_minute=3, per_hour=5, safety_seconds=0.0)
    budget = RateBudget(limits, clock=clock)
    for _ in range(2):
        assert budget.wait_seconds(reserve=1) == 0
        budget.take()
        clock.now += 1
    # Two of three used: an update must leave the last slot for a final frame.
    assert budget.wait_seconds(reserve=1) == pytest.approx(58.0)
    assert budget.wait_seconds(reserve=0) == 0
    budget.take()
    assert budget.wait_seconds(reserve=0) == pytest.approx(58.0)
    clock.now += 60
    budget.take()
    budget.take()
    # The hour allows five: the sixth waits for the first to leave the hour window.
    assert budget.wait_seconds(reserve=0) == pytest.approx(3600 - 62)
    with pytest.raises(ValueError):
        budget.wait_seconds(reserve=3)


def _aeskey() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


@pytest.mark.parametrize("size", [0, 1, 31, 32, 64, 100_000])
def test_media_encryption_round_trips_with_32_byte_padding(size: int) -> None:
    key = _aeskey()
    data = secrets.token_bytes(size)
    encrypted = media_encrypt(data=data, aeskey=key)
    assert len(encrypted) % 32 == 0 and len(encrypted) > size
    # The key arrives with or without base64 padding.
    assert media_decrypt(data=encrypted, aeskey=key.rstrip("=")) == data


def test_media_decrypt_refuses_a_wrong_key_or_a_bad_aeskey() -> None:
    # Media carries no MAC, so a wrong key is caught only by the padding check, which a
    # random key passes about once in 256 tries: these two fixed keys are known to fail it.
    key = base64.b64encode(bytes(range(32))).decode()
    wrong = base64.b64encode(bytes(range(1, 33))).decode()
    encrypted = media_encrypt(data=b"%PDF-1.7 quarterly report", aeskey=key)
    with pytest.raises(MediaError, match="could not be decrypted"):
        media_decrypt(data=encrypted, aeskey=wrong)
    with pytest.raises(MediaError, match="32 bytes"):
        media_decrypt(data=encrypted, aeskey=base64.b64encode(b"short").decode())
    with pytest.raises(MediaError, match="base64"):
        media_decrypt(data=encrypted, aeskey="not base64 !!")


def test_media_decrypt_with_a_random_wrong_key_never_returns_the_plaintext() -> None:
    data = b"%PDF-1.7 quarterly report"
    encrypted = media_encrypt(data=data, aeskey=_aeskey())
    refused = 0
    for _ in range(300):
        try:
            assert media_decrypt(data=encrypted, aeskey=_aeskey()) != data
        except MediaError:
            refused += 1
    assert refused >= 270


def test_file_callback_media_downloads_and_decrypts_from_the_simulator() -> None:
    document = b"%PDF-1.7\n" + secrets.token_bytes(70_000)

    async def scenario() -> None:
        received: list[bytes] = []

        async def on_file(frame: Frame, client: LongConnClient) -> None:
            item = frame.body["file"]
            received.append(await media_download(url=item["url"], aeskey=item["aeskey"]))
            await client.stream(frame).finish("got it")

        async with LongConnSimulator(bots={"b": "s"}) as sim:
            client = LongConnClient(bot_id="b", secret="s", handler=on_file, url=sim.url)
            task = asyncio.create_task(client.run())
            await client.wait_connected(5)
            callback, aeskey = await sim.push_media("b", document, filename="report.pdf")
            await sim.wait_finished(callback.req_id)
            assert received == [document]
            assert callback.body["file"]["filename"] == "report.pdf"

            url = callback.body["file"]["url"]
            with pytest.raises(MediaError, match="larger than"):
                await media_download(url=url, aeskey=aeskey, max_bytes=1024)
            with pytest.raises(MediaError, match="HTTP 404"):
                await media_download(url=url + "x", aeskey=aeskey)
            await client.stop()
            await task

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_media_download_takes_an_injected_transport() -> None:
    key = _aeskey()
    body = media_encrypt(data=b"hello", aeskey=key)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))

    async def scenario() -> bytes:
        return await media_download(url="https://media.invalid/x", aeskey=key, transport=transport)

    assert asyncio.run(scenario()) == b"hello"

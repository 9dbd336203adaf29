"""WeCom callback crypto: official test vectors, 32-byte padding, tampering, signature order."""

from __future__ import annotations

import base64
import json
import string
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from wechatpy.crypto import PrpCrypto

from wecom import crypto as crypto_module
from wecom.crypto import (
    SignatureError,
    WeComCrypto,
    WeComCryptoError,
    generate_encoding_aes_key,
    generate_token,
    validate_encoding_aes_key,
)

# --- Official vectors ---------------------------------------------------------------------
# Source 1: WeCom's Python JSON-callback sample, sbzhu/weworkapi_python, file
# callback_json/Sample.py (the library linked from developer.work.weixin.qq.com/document/
# path/90468, author jonyqin, "Copyright (c) 1998-2014 Tencent Inc.").
PY_TOKEN = "hJqcu3uJ9Tn2gXPmxx2w9kkCkCE2EPYo"
PY_KEY = "6qkdMrq68nTKduznJYO1A37W2oEgpkMUvkttRToqhUt"
PY_CORPID = "ww1436e0e65a779aee"
PY_VERIFY_SIGNATURE = "012bc692d0a58dd4b10f8dfe5c4ac00ae211ebeb"
PY_VERIFY_TIMESTAMP = "1476416373"
PY_VERIFY_NONCE = "47744683"
PY_VERIFY_ECHOSTR = (
    "fsi1xnbH4yQh0+PJxcOdhhK6TDXkjMyhEPA7xB2TGz6b+g7xyAbEkRxN/3cNXW9qdqjnoVzEtpbhnFyq6SVHyA=="
)
PY_MSG_SIGNATURE = "e3647471e395139e2308c1fa963f2d648a00b90e"
PY_MSG_TIMESTAMP = "1409659813"
PY_MSG_NONCE = "1372623149"
PY_MSG_ENCRYPT = (
    "cjhLUX7UU4yCSelv1vz7T0zT8huF51bAMVWriNvO1FMegHrQZNrtvRxbwf0fUPsFvwqR0U0fgiJNEA5Y30F2MoI2"
    "S7vv3EjVQ68C0cjw9frBoUE2Hj0BvFp9h3u6Vbsg4lc1C8AtHdaN8orKuNKkLRLuYEL52R1J3v8olJGZRLnRdVKIi"
    "vixmX/eQpzgeExtp20jI1HxRP1AAZ6xZoILdqDPO549LO4WeG+685JRUTdiwcY5fjZlqeMxuT4PpMn1X9OWsS7NR"
    "j06Wa5E3Tvg4twjWp39KPfOdRte6P1T4JU="
)
# The sample's plaintext really contains the typo `:mycreate"` (it is not valid JSON).
PY_MSG_PLAINTEXT = (
    b'{ "ToUserName": "wx5823bf96d3bd56c7", "FromUserName": :mycreate", "CreateTime": '
    b'1409659813, "MsgType": "text", "Content": "hello", "MsgId": 4561255354251345929, '
    b'"AgentID": 218}'
)

# Source 2: WeCom's Go JSON-callback sample, workweixin/weworkapi_golang, file
# json_callback/sample.go. Its message vector is padded with 22 bytes: a 16-byte PKCS#7
# unpadder rejects this genuine WeCom ciphertext.
GO_TOKEN = "QDG6eK"
GO_KEY = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
GO_RECEIVE_ID = "wx5823bf96d3bd56c7"
GO_VERIFY_SIGNATURE = "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
GO_VERIFY_TIMESTAMP = "1409659589"
GO_VERIFY_NONCE = "263014780"
GO_VERIFY_ECHOSTR = (
    "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
)
GO_MSG_SIGNATURE = "0623cbc5a8cbee5bcc137c70de99575366fc2af3"
GO_MSG_TIMESTAMP = "1409659813"
GO_MSG_NONCE = "1372623149"
GO_MSG_BODY = (
    b'{"tousername":"wx5823bf96d3bd56c7","encrypt":"CZWs4CWRpI4VolQlvn4dlEC1alN2MUEY2VklGehgBVLB'
    b"rlVF7SyT+SV+Toj43l4ayJ9UMGKphktKKmP7B2j/P1ey67XB8PBgS7Wr5/8+w/yWriZv3Vmoo/MH3/1HsIWZrPQ3"
    b"N2mJrelStIfI2Y8kLKXA7EhfZgZX4o+ffdkZDM76SEl79Ib9mw7TGjZ9Aw/x/A2VjNbV1E8BtEbRxYYcQippYNw7"
    b"hr8sFfa3nW1xLdxokt8QkRX83vK3DFP2F6TQFPL2Tu98UwhcUpPvdJBuu1/yiOQIScppV3eOuLWEsko="
    b'","agentid":"218"}'
)

KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
TOKEN = "test-token"


# --- independent helpers: raw cryptography primitives, not the module under test -----------


def _aes_key(encoding_aes_key: str) -> bytes:
    return base64.b64decode(encoding_aes_key + "=")


def _raw_encrypt(encoding_aes_key: str, padded: bytes) -> str:
    key = _aes_key(encoding_aes_key)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def _raw_decrypt(encoding_aes_key: str, encrypt: str) -> bytes:
    key = _aes_key(encoding_aes_key)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    return decryptor.update(base64.b64decode(encrypt)) + decryptor.finalize()


def _frame(message: bytes, receive_id: bytes, *, length: int | None = None) -> bytes:
    size = len(message) if length is None else length
    return b"R" * 16 + struct.pack(">I", size) + message + receive_id


def _pad32(data: bytes) -> bytes:
    count = 32 - len(data) % 32
    return data + bytes([count]) * count


def _assert_opaque(error: WeComCryptoError) -> None:
    assert str(error) == WeComCryptoError.MESSAGE
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


@pytest.fixture
def bot() -> WeComCrypto:
    return WeComCrypto(token=TOKEN, encoding_aes_key=KEY)


# --- official vectors -----------------------------------------------------------------------


def test_official_python_sample_url_verification() -> None:
    crypto = WeComCrypto(token=PY_TOKEN, encoding_aes_key=PY_KEY, receive_id=PY_CORPID)

    assert (
        crypto.signature(PY_VERIFY_TIMESTAMP, PY_VERIFY_NONCE, PY_VERIFY_ECHOSTR)
        == PY_VERIFY_SIGNATURE
    )
    echo = crypto.verify_url(
        msg_signature=PY_VERIFY_SIGNATURE,
        timestamp=PY_VERIFY_TIMESTAMP,
        nonce=PY_VERIFY_NONCE,
        echostr=PY_VERIFY_ECHOSTR,
    )

    assert echo == "1288432023552776189"


def test_official_python_sample_message_decrypts_but_is_not_json() -> None:
    crypto = WeComCrypto(token=PY_TOKEN, encoding_aes_key=PY_KEY, receive_id=PY_CORPID)
    crypto.check_signature(PY_MSG_SIGNATURE, PY_MSG_TIMESTAMP, PY_MSG_NONCE, PY_MSG_ENCRYPT)

    assert crypto.decrypt(PY_MSG_ENCRYPT) == PY_MSG_PLAINTEXT
    # The genuine sample plaintext is broken JSON: decrypt_callback must refuse it.
    with pytest.raises(WeComCryptoError):
        crypto.decrypt_callback(
            msg_signature=PY_MSG_SIGNATURE,
            timestamp=PY_MSG_TIMESTAMP,
            nonce=PY_MSG_NONCE,
            body=json.dumps({"encrypt": PY_MSG_ENCRYPT}).encode(),
        )


def test_official_go_sample_url_verification() -> None:
    crypto = WeComCrypto(token=GO_TOKEN, encoding_aes_key=GO_KEY, receive_id=GO_RECEIVE_ID)

    echo = crypto.verify_url(
        msg_signature=GO_VERIFY_SIGNATURE,
        timestamp=GO_VERIFY_TIMESTAMP,
        nonce=GO_VERIFY_NONCE,
        echostr=GO_VERIFY_ECHOSTR,
    )

    assert echo == "1616140317555161061"


def test_official_go_sample_message_with_pad_value_22() -> None:
    crypto = WeComCrypto(token=GO_TOKEN, encoding_aes_key=GO_KEY, receive_id=GO_RECEIVE_ID)
    encrypt = json.loads(GO_MSG_BODY)["encrypt"]
    assert _raw_decrypt(GO_KEY, encrypt)[-1] == 22  # > 16: needs the 32-byte unpadder

    data = crypto.decrypt_callback(
        msg_signature=GO_MSG_SIGNATURE,
        timestamp=GO_MSG_TIMESTAMP,
        nonce=GO_MSG_NONCE,
        body=GO_MSG_BODY,
    )

    assert data == {
        "ToUserName": "wx5823bf96d3bd56c7",
        "FromUserName": "mycreate",
        "CreateTime": 1409659813,
        "MsgType": "text",
        "Content": "hello",
        "MsgId": 4561255354251345929,
        "AgentID": 218,
    }


def test_encrypt_reproduces_official_ciphertext_byte_for_byte() -> None:
    crypto = WeComCrypto(token=GO_TOKEN, encoding_aes_key=GO_KEY, receive_id=GO_RECEIVE_ID)
    encrypt = json.loads(GO_MSG_BODY)["encrypt"]
    prefix = _raw_decrypt(GO_KEY, encrypt)[:16]

    again = crypto.encrypt(crypto.decrypt(encrypt), random_prefix=prefix)

    assert again == encrypt
    assert crypto.signature(GO_MSG_TIMESTAMP, GO_MSG_NONCE, again) == GO_MSG_SIGNATURE


# --- padding --------------------------------------------------------------------------------


@pytest.mark.parametrize("receive_id", ["", PY_CORPID])
@pytest.mark.parametrize("pad", range(1, 33))
def test_round_trip_for_every_pad_value(receive_id: str, pad: int) -> None:
    crypto = WeComCrypto(token=TOKEN, encoding_aes_key=KEY, receive_id=receive_id)
    length = (-(pad + 20 + len(receive_id))) % 32 + 64
    message = bytes(range(256))[:length] if length <= 256 else b"x" * length

    encrypt = crypto.encrypt(message)

    assert _raw_decrypt(KEY, encrypt)[-pad:] == bytes([pad]) * pad
    assert crypto.decrypt(encrypt) == message


@pytest.mark.parametrize("pad", range(17, 33))
def test_independently_built_ciphertexts_with_large_pad_values_are_accepted(pad: int) -> None:
    crypto = WeComCrypto(token=TOKEN, encoding_aes_key=KEY)
    message = b"m" * ((-(pad + 20)) % 32)
    padded = _pad32(_frame(message, b""))
    assert padded[-1] == pad

    assert crypto.decrypt(_raw_encrypt(KEY, padded)) == message


def _tampered_ciphertexts() -> dict[str, str]:
    message = b'{"msgtype":"text"}'
    good = _pad32(_frame(message, b""))
    body = _frame(message, b"")
    fill = 32 - len(body) % 32
    cases = {
        "pad value 0": body + b"\x00" * fill,
        "pad value 33": body[: len(body) - (33 - fill)] + b"\x21" * 33,
        "inconsistent pad bytes": good[:-2] + b"\x01" + good[-1:],
        "pad longer than the data": b"\x40" * 64,
        "wrong receiveid": _pad32(_frame(message, b"ww-someone-else")),
        "receiveid where none is expected": _pad32(_frame(message, b"x")),
        "length field beyond the data": _pad32(_frame(message, b"", length=len(message) + 1)),
        "length field huge": _pad32(_frame(message, b"", length=0xFFFFFFFF)),
        "length field short": _pad32(_frame(message, b"", length=len(message) - 1)),
        "shorter than the header": _pad32(b"R" * 10),
    }
    encrypted = {name: _raw_encrypt(KEY, data) for name, data in cases.items()}
    good_encrypt = _raw_encrypt(KEY, good)
    raw = base64.b64decode(good_encrypt)
    encrypted |= {
        "truncated by 16 bytes": base64.b64encode(raw[:-16]).decode(),
        "truncated by 32 bytes": base64.b64encode(raw[:-32]).decode(),
        "one extra byte": base64.b64encode(raw + b"\x00").decode(),
        "empty": "",
        "not base64": "not*base64!",
        "base64 with whitespace": good_encrypt[:10] + " " + good_encrypt[10:],
        "non-ascii text": "密文",
    }
    return encrypted


@pytest.mark.parametrize("case", sorted(_tampered_ciphertexts()))
def test_every_decrypt_failure_is_the_same_error(bot: WeComCrypto, case: str) -> None:
    with pytest.raises(WeComCryptoError) as caught:
        bot.decrypt(_tampered_ciphertexts()[case])

    _assert_opaque(caught.value)


def test_decrypt_failures_are_indistinguishable(bot: WeComCrypto) -> None:
    messages = set()
    for encrypt in _tampered_ciphertexts().values():
        with pytest.raises(WeComCryptoError) as caught:
            bot.decrypt(encrypt)
        messages.add((type(caught.value), str(caught.value), caught.value.args))

    assert len(messages) == 1


def test_receive_id_must_match_exactly() -> None:
    app = WeComCrypto(token=TOKEN, encoding_aes_key=KEY, receive_id=PY_CORPID)
    other = WeComCrypto(token=TOKEN, encoding_aes_key=KEY, receive_id=PY_CORPID + "x")

    with pytest.raises(WeComCryptoError):
        other.decrypt(app.encrypt(b"hello"))


def test_media_decryption_uses_the_same_key_and_strict_padding(bot: WeComCrypto) -> None:
    media = bytes(range(256)) * 3 + b"tail"

    assert bot.decrypt_media(base64.b64decode(_raw_encrypt(KEY, _pad32(media)))) == media
    with pytest.raises(WeComCryptoError):
        bot.decrypt_media(base64.b64decode(_raw_encrypt(KEY, media[:32])))


# --- interoperability with wechatpy -------------------------------------------------------


def test_ciphertexts_interoperate_with_wechatpy() -> None:
    crypto = WeComCrypto(token=TOKEN, encoding_aes_key=KEY, receive_id=PY_CORPID)
    theirs = PrpCrypto(_aes_key(KEY))
    text = '{"content":"你好 WeCom"}'

    assert theirs.decrypt(crypto.encrypt(text.encode()), PY_CORPID) == text
    assert crypto.decrypt(theirs.encrypt(text, PY_CORPID).decode()) == text.encode()


# --- signatures -----------------------------------------------------------------------------


def test_signature_is_sha1_of_the_sorted_parts(bot: WeComCrypto) -> None:
    import hashlib

    parts = [TOKEN, "1700000000", "nonce-1", "ENCRYPTED"]
    expected = hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()

    assert bot.signature("1700000000", "nonce-1", "ENCRYPTED") == expected


def test_signature_check_is_constant_time(
    bot: WeComCrypto, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = crypto_module.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(crypto_module.hmac, "compare_digest", spy)
    good = bot.signature("1", "2", "3")

    bot.check_signature(good, "1", "2", "3")
    with pytest.raises(SignatureError):
        bot.check_signature("0" * 40, "1", "2", "3")

    assert calls == [(good.encode(), good.encode()), (good.encode(), b"0" * 40)]


@pytest.mark.parametrize("bad", ["", "0" * 40, "签名", "A" * 41])
def test_bad_signatures_raise_signature_error(bot: WeComCrypto, bad: str) -> None:
    with pytest.raises(SignatureError):
        bot.check_signature(bad, "1", "2", "3")


def test_signature_is_checked_before_decrypting(
    bot: WeComCrypto, monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = "not even base64!"

    with pytest.raises(SignatureError):
        bot.verify_url(msg_signature="0" * 40, timestamp="1", nonce="2", echostr=garbage)
    with pytest.raises(SignatureError):
        bot.decrypt_callback(
            msg_signature="0" * 40,
            timestamp="1",
            nonce="2",
            body=json.dumps({"encrypt": garbage}).encode(),
        )

    def must_not_run(encrypt: str) -> bytes:
        raise AssertionError("decrypt ran before the signature was checked")

    monkeypatch.setattr(bot, "decrypt", must_not_run)
    with pytest.raises(SignatureError):
        bot.decrypt_callback(
            msg_signature="0" * 40,
            timestamp="1",
            nonce="2",
            body=json.dumps({"encrypt": bot.encrypt(b"{}")}).encode(),
        )


def test_good_signature_on_garbage_is_a_crypto_error(bot: WeComCrypto) -> None:
    garbage = "not even base64!"
    signature = bot.signature("1", "2", garbage)

    with pytest.raises(WeComCryptoError):
        bot.verify_url(msg_signature=signature, timestamp="1", nonce="2", echostr=garbage)


# --- callbacks and replies ------------------------------------------------------------------


def _signed_body(crypto: WeComCrypto, plaintext: bytes) -> dict[str, object]:
    encrypt = crypto.encrypt(plaintext)
    return {
        "msg_signature": crypto.signature("1700000000", "42", encrypt),
        "timestamp": "1700000000",
        "nonce": "42",
        "body": json.dumps({"encrypt": encrypt}).encode(),
    }


def test_decrypt_callback_returns_the_message_object(bot: WeComCrypto) -> None:
    message = {"msgid": "m1", "msgtype": "text", "text": {"content": "@RobotA 你好"}}

    data = bot.decrypt_callback(**_signed_body(bot, json.dumps(message).encode()))  # type: ignore[arg-type]

    assert data == message


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b'"encrypt"', b"{}", b'{"encrypt": 5}', b'{"encrypt": ""}', b"\xff"],
)
def test_malformed_callback_bodies_are_crypto_errors(bot: WeComCrypto, body: bytes) -> None:
    with pytest.raises(WeComCryptoError) as caught:
        bot.decrypt_callback(msg_signature="0" * 40, timestamp="1", nonce="2", body=body)

    _assert_opaque(caught.value)


@pytest.mark.parametrize("plaintext", [b"[1, 2]", b'"text"', b"null", b"{broken", b"\xff\xfe"])
def test_decrypted_plaintext_must_be_a_json_object(bot: WeComCrypto, plaintext: bytes) -> None:
    with pytest.raises(WeComCryptoError) as caught:
        bot.decrypt_callback(**_signed_body(bot, plaintext))  # type: ignore[arg-type]

    _assert_opaque(caught.value)


def test_oversized_callback_body_is_rejected(bot: WeComCrypto) -> None:
    body = json.dumps({"encrypt": "A" * (crypto_module.MAX_CALLBACK_BODY_BYTES + 1)}).encode()

    with pytest.raises(WeComCryptoError):
        bot.decrypt_callback(msg_signature="0" * 40, timestamp="1", nonce="2", body=body)


def test_encrypt_reply_is_signed_compact_utf8_json(bot: WeComCrypto) -> None:
    payload = {"msgtype": "stream", "stream": {"id": "s1", "finish": False, "content": "中文"}}

    reply = bot.encrypt_reply(payload, nonce="1372623149", timestamp="1409659813")

    assert set(reply) == {"encrypt", "msgsignature", "timestamp", "nonce"}
    assert reply["nonce"] == "1372623149"
    assert reply["timestamp"] == "1409659813"
    bot.check_signature(reply["msgsignature"], reply["timestamp"], reply["nonce"], reply["encrypt"])
    plaintext = bot.decrypt(reply["encrypt"])
    assert (
        plaintext
        == '{"msgtype":"stream","stream":{"id":"s1","finish":false,"content":"中文"}}'.encode()
    )


def test_encrypt_reply_defaults_to_the_current_timestamp(bot: WeComCrypto) -> None:
    reply = bot.encrypt_reply({"a": 1}, nonce="n")

    assert reply["timestamp"].isdigit()
    assert int(reply["timestamp"]) > 1_700_000_000


def test_encryption_is_randomised(bot: WeComCrypto) -> None:
    assert bot.encrypt(b"same") != bot.encrypt(b"same")
    with pytest.raises(ValueError, match="random_prefix"):
        bot.encrypt(b"x", random_prefix=b"short")


# --- keys and tokens ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (KEY[:-1], "exactly 43 characters"),
        (KEY + "A", "exactly 43 characters"),
        ("", "exactly 43 characters"),
        (KEY[:-1] + "!", "letters, digits"),
        (KEY[:-1] + "=", "letters, digits"),
    ],
)
def test_invalid_encoding_aes_keys_are_rejected(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_encoding_aes_key(value)
    with pytest.raises(ValueError, match=message):
        WeComCrypto(token=TOKEN, encoding_aes_key=value)


def test_empty_token_is_rejected() -> None:
    with pytest.raises(ValueError, match="Token"):
        WeComCrypto(token="", encoding_aes_key=KEY)


def test_generated_keys_are_valid_alphanumeric_and_fresh() -> None:
    keys = {generate_encoding_aes_key() for _ in range(50)}

    assert len(keys) == 50
    for key in keys:
        assert len(key) == 43 and key.isalnum() and key.isascii()
        validate_encoding_aes_key(key)
        assert len(base64.b64decode(key + "=")) == 32


def test_generated_tokens_are_32_alphanumeric_characters() -> None:
    tokens = {generate_token() for _ in range(50)}

    assert len(tokens) == 50
    alphabet = set(string.ascii_letters + string.digits)
    assert all(len(token) == 32 and set(token) <= alphabet for token in tokens)


def test_repr_hides_secrets() -> None:
    crypto = WeComCrypto(token="secret-token-value", encoding_aes_key=KEY, receive_id="corp")

    assert "secret-token-value" not in repr(crypto)
    assert KEY not in repr(crypto)

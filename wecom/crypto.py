"""WeCom callback crypto: message signatures and the AES-256-CBC envelope (docs 91144, 101033).

Plaintext layout: 16 random bytes + 4-byte big-endian length + message + receiveid, padded
with PKCS#7 to a multiple of 32 bytes (pad values 1..32), key = b64decode(EncodingAESKey + "="),
iv = key[:16]. The receiveid is "" for the AI bot and the CorpID for a self-built app.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import string
import struct
import time
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from wechatpy.utils import WeChatSigner

ENCODING_AES_KEY_LENGTH = 43
AES_KEY_BYTES = 32
PAD_BLOCK_BYTES = 32
RANDOM_PREFIX_BYTES = 16
LENGTH_FIELD_BYTES = 4
TOKEN_LENGTH = 32
# A callback body is a few KB at most; anything far larger is not WeCom talking.
MAX_CALLBACK_BODY_BYTES = 1024 * 1024

_BASE64_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/")
_ALNUM = string.ascii_letters + string.digits
_HEADER_BYTES = RANDOM_PREFIX_BYTES + LENGTH_FIELD_BYTES


class WeComCryptoError(Exception):
    """Any decryption failure, deliberately indistinguishable.

    Every failed check (base64, block size, padding, length field, receiveid, JSON) raises
    this with the same message, so a caller or log line cannot act as a decryption oracle.
    """

    MESSAGE = "WeCom payload could not be decrypted"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class SignatureError(Exception):
    """The msg_signature does not match; the payload must not be decrypted or trusted."""

    def __init__(self) -> None:
        super().__init__("WeCom msg_signature does not match")


def validate_encoding_aes_key(value: str) -> None:
    """Reject an EncodingAESKey that WeCom would never issue, with a message an admin can act on.

    WeCom keys are 43 base64 characters that decode (after appending "=") to a 32-byte AES key.
    """
    if not isinstance(value, str):
        raise ValueError("EncodingAESKey must be a string")
    if len(value) != ENCODING_AES_KEY_LENGTH:
        raise ValueError(
            f"EncodingAESKey must be exactly {ENCODING_AES_KEY_LENGTH} characters "
            f"(got {len(value)})"
        )
    if not set(value) <= _BASE64_ALPHABET:
        raise ValueError("EncodingAESKey may only contain letters, digits, '+' and '/'")
    try:
        key = base64.b64decode(value + "=", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("EncodingAESKey is not valid base64") from None
    if len(key) != AES_KEY_BYTES:  # pragma: no cover - 43 base64 chars always give 32 bytes
        raise ValueError(f"EncodingAESKey must decode to {AES_KEY_BYTES} bytes")


def generate_encoding_aes_key() -> str:
    """Return a fresh 43-character EncodingAESKey made of letters and digits only.

    WeCom's admin form accepts only letters and digits, so keys containing '+' or '/'
    (which plain base64 would produce) are redrawn.
    """
    while True:
        key = base64.b64encode(secrets.token_bytes(AES_KEY_BYTES)).decode("ascii").rstrip("=")
        if key.isalnum():
            return key


def generate_token() -> str:
    """Return a 32-character alphanumeric callback Token (WeCom allows 3..32 letters/digits)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(TOKEN_LENGTH))


def aes_cbc_encrypt(key: bytes, data: bytes) -> bytes:
    """AES-256-CBC with iv = key[:16] and 32-byte PKCS#7, WeCom's scheme for envelopes and media."""
    if len(key) != AES_KEY_BYTES:
        raise ValueError(f"the AES key must be {AES_KEY_BYTES} bytes")
    padder = padding.PKCS7(PAD_BLOCK_BYTES * 8).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def aes_cbc_decrypt(key: bytes, data: bytes) -> bytes:
    """Undo `aes_cbc_encrypt`; every failure (key, block size, padding) is one WeComCryptoError."""
    if len(key) != AES_KEY_BYTES or not data or len(data) % PAD_BLOCK_BYTES:
        raise WeComCryptoError()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(PAD_BLOCK_BYTES * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise WeComCryptoError() from None


class WeComCrypto:
    """Signs, verifies, encrypts and decrypts WeCom callback payloads for one bot or app."""

    def __init__(self, *, token: str, encoding_aes_key: str, receive_id: str = "") -> None:
        if not isinstance(token, str) or not token:
            raise ValueError("Token must be a non-empty string")
        validate_encoding_aes_key(encoding_aes_key)
        self._token = token
        self._key = base64.b64decode(encoding_aes_key + "=")
        self._receive_id = receive_id.encode("utf-8")

    def __repr__(self) -> str:
        # Never echo the token or key into logs or tracebacks.
        return f"WeComCrypto(receive_id={self._receive_id.decode('utf-8')!r})"

    # -- signatures -------------------------------------------------------------------------

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        """sha1 over the sorted concatenation of token, timestamp, nonce and ciphertext."""
        signer = WeChatSigner()
        signer.add_data(self._token, timestamp, nonce, encrypt)
        return str(signer.signature)

    def check_signature(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> None:
        """Raise SignatureError unless msg_signature matches; compared in constant time."""
        expected = self.signature(timestamp, nonce, encrypt).encode("utf-8")
        if not hmac.compare_digest(expected, msg_signature.encode("utf-8")):
            raise SignatureError()

    # -- AES envelope -----------------------------------------------------------------------

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))

    def encrypt(self, plaintext: bytes, *, random_prefix: bytes | None = None) -> str:
        """Wrap plaintext in WeCom's envelope and return it base64-encoded.

        random_prefix exists only so tests can reproduce published vectors; leave it None.
        """
        if random_prefix is None:
            random_prefix = secrets.token_bytes(RANDOM_PREFIX_BYTES)
        if len(random_prefix) != RANDOM_PREFIX_BYTES:
            raise ValueError(f"random_prefix must be {RANDOM_PREFIX_BYTES} bytes")
        framed = random_prefix + struct.pack(">I", len(plaintext)) + plaintext + self._receive_id
        padder = padding.PKCS7(PAD_BLOCK_BYTES * 8).padder()
        padded = padder.update(framed) + padder.finalize()
        encryptor = self._cipher().encryptor()
        ciphertext = encryptor.update(padded) + encryptor.finalize()
        return base64.b64encode(ciphertext).decode("ascii")

    def _decrypt_padded(self, ciphertext: bytes) -> bytes:
        """AES-CBC decrypt and strip strict 32-byte PKCS#7 padding, or raise WeComCryptoError."""
        return aes_cbc_decrypt(self._key, ciphertext)

    def decrypt(self, encrypt: str) -> bytes:
        """Return the message inside a base64 envelope; every failure is one WeComCryptoError.

        Callers must check the signature first: it authenticates the ciphertext, which is what
        keeps CBC padding checks from ever being reachable by an attacker.
        """
        try:
            ciphertext = base64.b64decode(encrypt.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError, AttributeError):
            raise WeComCryptoError() from None
        plain = self._decrypt_padded(ciphertext)
        if len(plain) < _HEADER_BYTES:
            raise WeComCryptoError()
        (length,) = struct.unpack(">I", plain[RANDOM_PREFIX_BYTES:_HEADER_BYTES])
        end = _HEADER_BYTES + length
        if end > len(plain):
            raise WeComCryptoError()
        if not hmac.compare_digest(plain[end:], self._receive_id):
            raise WeComCryptoError()
        return plain[_HEADER_BYTES:end]

    def decrypt_media(self, data: bytes) -> bytes:
        """Decrypt a downloaded image/file/video body (no random prefix, length or receiveid).

        WeCom encrypts media behind image.url/file.url with the same key, IV and 32-byte PKCS#7.
        """
        return self._decrypt_padded(data)

    # -- callback helpers -------------------------------------------------------------------

    def verify_url(self, *, msg_signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """Answer WeCom's URL check: verify the signature, then return the decrypted echo."""
        self.check_signature(msg_signature, timestamp, nonce, echostr)
        try:
            return self.decrypt(echostr).decode("utf-8")
        except UnicodeDecodeError:
            raise WeComCryptoError() from None

    def decrypt_callback(
        self, *, msg_signature: str, timestamp: str, nonce: str, body: bytes
    ) -> dict[str, Any]:
        """Authenticate and decrypt a POSTed `{"encrypt": ...}` body into the message object."""
        if len(body) > MAX_CALLBACK_BODY_BYTES:
            raise WeComCryptoError()
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise WeComCryptoError() from None
        encrypt = envelope.get("encrypt") if isinstance(envelope, dict) else None
        if not isinstance(encrypt, str) or not encrypt:
            raise WeComCryptoError()
        self.check_signature(msg_signature, timestamp, nonce, encrypt)
        plaintext = self.decrypt(encrypt)
        try:
            data = json.loads(plaintext)
        except (ValueError, UnicodeDecodeError):
            raise WeComCryptoError() from None
        if not isinstance(data, dict):
            raise WeComCryptoError()
        return data

    def encrypt_reply(
        self, payload: dict[str, Any], *, nonce: str, timestamp: str | None = None
    ) -> dict[str, str]:
        """Build the encrypted passive reply; nonce must echo the callback's nonce."""
        if timestamp is None:
            timestamp = str(int(time.time()))
        plaintext = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        encrypt = self.encrypt(plaintext.encode("utf-8"))
        return {
            "encrypt": encrypt,
            "msgsignature": self.signature(timestamp, nonce, encrypt),
            "timestamp": timestamp,
            "nonce": nonce,
        }

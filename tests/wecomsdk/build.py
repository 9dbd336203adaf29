"""Build the test stand-in of the archive SDK and write the fixtures it serves.

Tests compile ``finance_sdk_test.c`` with the system C compiler and point it at a
fixture that seals records the way WeCom does (random key RSA-encrypted with the public
key of a version), so the real ctypes binding and key handling run end to end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "FIXTURE_ENV",
    "LIBRARY_NAME",
    "MEDIA_PIECE_SIZE",
    "FixtureRecord",
    "build_test_sdk",
    "sdk_env_for",
    "sdk_settings_for",
    "seal_message",
    "write_fixture",
]

FIXTURE_ENV = "WECOM_TESTSDK_FIXTURE"
LIBRARY_NAME = "libWeWorkFinanceSdk_C.so"
MEDIA_PIECE_SIZE = 512 * 1024
SOURCE = Path(__file__).with_name("finance_sdk_test.c")
CFLAGS = ("-shared", "-fPIC", "-O2", "-fvisibility=hidden")
_MAGIC = b"TSDK1:"
_MASK64 = (1 << 64) - 1


def build_test_sdk(out_dir: Path) -> Path:
    """Compile the stand-in library into ``out_dir`` and return its path.

    The output folder is named after a hash of the source and flags, so repeated test runs
    reuse the build and an edited source never loads a stale library.
    """
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC or install cc) to build the test SDK")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + "\0".join(CFLAGS).encode()).hexdigest()[:16]
    target = out_dir / f"testsdk-{digest}" / LIBRARY_NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(fd)
    try:
        argv = [compiler, *CFLAGS, "-o", partial, str(SOURCE)]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"building the test SDK failed:\n{result.stderr}")
        os.replace(partial, target)  # atomic, so parallel test workers never see half a file
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def sdk_settings_for(library: Path) -> dict[str, Any]:
    """Django settings under which the archive service loads the stand-in at `library`.

    Its own folder is the allow-listed directory, and the user running the tests is a
    trusted owner (the build belongs to them, not to root).
    """
    return {
        "ARCHIVE_SDK_LIBRARY": str(library),
        "ARCHIVE_SDK_ALLOWED_DIRS": [str(library.parent)],
        "ARCHIVE_SDK_TRUSTED_UIDS": sorted({0, os.geteuid()}),
    }


def sdk_env_for(library: Path) -> dict[str, str]:
    """The same as environment variables, for worker processes."""
    return {
        name: ",".join(map(str, value)) if isinstance(value, list) else value
        for name, value in sdk_settings_for(library).items()
    }


def _keystream(key: str, length: int) -> bytes:
    """Mirror of the C stand-in's keystream: FNV-1a seed, xorshift64* bytes."""
    state = 1469598103934665603
    for byte in key.encode():
        state = ((state ^ byte) * 1099511628211) & _MASK64
    state = state or 0x9E3779B97F4A7C15
    out = bytearray(length)
    for i in range(length):
        state ^= state >> 12
        state = (state ^ (state << 25)) & _MASK64
        state ^= state >> 27
        out[i] = ((state * 0x2545F4914F6CDD1D) & _MASK64) >> 56
    return bytes(out)


def seal_message(message: Mapping[str, Any], random_key: str, *, corrupt: bool = False) -> str:
    """Encrypt a message for the stand-in's ``DecryptData`` (not WeCom's real algorithm).

    ``corrupt`` flips one bit so ``DecryptData`` fails with 10006, as it would for a
    record whose key and message do not belong together.
    """
    plain = _MAGIC + json.dumps(message, ensure_ascii=False).encode()
    stream = _keystream(random_key, len(plain))
    sealed = bytearray(a ^ b for a, b in zip(plain, stream, strict=True))
    if corrupt:
        sealed[0] ^= 0x01
    return base64.b64encode(bytes(sealed)).decode()


@dataclass(frozen=True, slots=True)
class FixtureRecord:
    """One archived message as WeCom would hold it before sealing.

    ``message`` is the decrypted JSON (``msgid``, ``action``, ``from``, ...); ``seq``
    defaults to one more than the previous record's.
    """

    message: Mapping[str, Any]
    publickey_ver: int
    seq: int | None = None


def _public_key(key: str | bytes | rsa.RSAPublicKey) -> rsa.RSAPublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        return key
    loaded = serialization.load_pem_public_key(key.encode() if isinstance(key, str) else key)
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise TypeError("archive public keys must be RSA keys")
    return loaded


def _one_line(value: str, what: str) -> str:
    if not value or any(char in value for char in " \r\n"):
        raise ValueError(f"{what} {value!r} must be non-empty without spaces or newlines")
    return value


def write_fixture(
    path: Path,
    records: Sequence[FixtureRecord],
    *,
    public_keys: Mapping[int, str | bytes | rsa.RSAPublicKey],
    corp_id: str,
    secret: str,
    media: Mapping[str, bytes] | None = None,
    media_piece_size: int = MEDIA_PIECE_SIZE,
    chat_errors: Mapping[int, int] | None = None,
    media_errors: Mapping[int, int] | None = None,
    undecryptable_msgids: Collection[str] = (),
) -> None:
    """Write a fixture for the stand-in SDK (set ``WECOM_TESTSDK_FIXTURE`` to ``path``).

    Each record gets a fresh random key, RSA-encrypted (PKCS#1 v1.5, base64) with the
    public key of its ``publickey_ver``. ``chat_errors``/``media_errors`` map a 1-based
    call number of GetChatData/GetMediaData to the code that call returns; media
    contents are written next to the fixture and served in ``media_piece_size`` pieces.
    """
    if not 0 < media_piece_size <= MEDIA_PIECE_SIZE:
        raise ValueError(f"media_piece_size must be in 1..{MEDIA_PIECE_SIZE}")
    lines = [f"corpid {_one_line(corp_id, 'corp_id')}", f"secret {_one_line(secret, 'secret')}"]
    seq = 0
    for record in records:
        seq = record.seq if record.seq is not None else seq + 1
        if record.publickey_ver not in public_keys:
            raise ValueError(f"no public key for publickey_ver={record.publickey_ver}")
        msgid = str(record.message["msgid"])
        random_key = secrets.token_hex(16)
        sealed_key = _public_key(public_keys[record.publickey_ver]).encrypt(
            random_key.encode(), padding.PKCS1v15()
        )
        item = {
            "seq": seq,
            "msgid": msgid,
            "publickey_ver": record.publickey_ver,
            "encrypt_random_key": base64.b64encode(sealed_key).decode(),
            "encrypt_chat_msg": seal_message(
                record.message, random_key, corrupt=msgid in undecryptable_msgids
            ),
        }
        lines.append(f"chat {seq} {json.dumps(item, separators=(',', ':'))}")
    for number, (fileid, content) in enumerate((media or {}).items()):
        content_path = path.with_name(f"{path.name}.media{number}.bin")
        content_path.write_bytes(content)
        lines.append(f"media {_one_line(fileid, 'sdkfileid')} {media_piece_size} {content_path}")
    for function, errors in (("GetChatData", chat_errors), ("GetMediaData", media_errors)):
        for call_number, code in (errors or {}).items():
            lines.append(f"fail {function} {call_number} {code}")
    path.write_text("\n".join(lines) + "\n", encoding="ascii")

"""Turning pulled session-archive records into typed messages.

WeCom encrypts each record's random key with the corporation's RSA public key of a given
version; the matching private key unwraps it and the vendor SDK decrypts the message with
it. Old key versions must be kept, since records carry the version they were sealed with.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

if TYPE_CHECKING:
    from wecom.archive.sdk import FinanceSdk

__all__ = [
    "MEDIA_MSGTYPES",
    "ArchiveRecordError",
    "ArchivedMessage",
    "EncryptedRecord",
    "MalformedArchiveRecord",
    "RandomKeyDecryptError",
    "UnknownKeyVersion",
    "decrypt_random_key",
    "open_record",
    "parse_archived_message",
    "parse_encrypted_record",
]

MEDIA_MSGTYPES = frozenset({"image", "file", "voice", "video"})
_ACTIONS = ("send", "recall", "switch")
Action = Literal["send", "recall", "switch"]


class ArchiveRecordError(Exception):
    """A single archive record cannot be turned into a message (the batch may go on)."""


class UnknownKeyVersion(ArchiveRecordError):
    """The record was sealed with a public key version whose private key we do not hold."""

    def __init__(self, version: int, known: Sequence[int]) -> None:
        self.version = version
        known_text = ", ".join(str(v) for v in sorted(known)) or "none"
        super().__init__(
            f"no private key for publickey_ver={version} (configured versions: {known_text}); "
            "add the private key of that version to the archive settings"
        )


class RandomKeyDecryptError(ArchiveRecordError):
    """``encrypt_random_key`` is not valid base64 or does not decrypt with that key."""


class MalformedArchiveRecord(ArchiveRecordError):
    """A record or decrypted message lacks required fields or has wrong types."""


@dataclass(frozen=True, slots=True)
class EncryptedRecord:
    """One ``chatdata`` item as returned by ``GetChatData``."""

    seq: int
    msgid: str
    publickey_ver: int
    encrypt_random_key: str
    encrypt_chat_msg: str


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """The fields of a decrypted archive message the product stores and checks.

    ``revoked_msgid`` is set for recalls; ``sdkfileid`` for image/file/voice/video;
    ``raw`` keeps the whole decrypted JSON for message types not modelled here.
    """

    msgid: str
    action: Action
    sender: str
    tolist: tuple[str, ...]
    roomid: str
    msgtime: dt.datetime
    msgtype: str
    text: str | None
    sdkfileid: str | None
    revoked_msgid: str | None
    external: bool
    raw: Mapping[str, Any] = field(compare=False, repr=False)


@functools.lru_cache(maxsize=32)
def _load_private_key(pem: str) -> rsa.RSAPrivateKey:
    """Parse a PEM key once; records arrive in batches of up to 1,000 per version."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("archive private keys must be RSA keys")
    return key


def decrypt_random_key(
    encrypt_random_key_b64: str, private_keys: Mapping[int, str], *, publickey_ver: int
) -> str:
    """Unwrap ``encrypt_random_key`` with the PEM private key of ``publickey_ver``.

    RSA PKCS#1 v1.5, as WeCom seals it. OpenSSL answers a wrong key with random bytes
    rather than an error (implicit rejection), so a result that is not printable text is
    treated as a failure.
    """
    try:
        pem = private_keys[publickey_ver]
    except KeyError:
        raise UnknownKeyVersion(publickey_ver, list(private_keys)) from None
    try:
        sealed = base64.b64decode(encrypt_random_key_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RandomKeyDecryptError("encrypt_random_key is not valid base64") from exc
    try:
        key = _load_private_key(pem)
    except (TypeError, ValueError) as exc:
        raise RandomKeyDecryptError(
            f"the private key of publickey_ver={publickey_ver} cannot be loaded: {exc}"
        ) from exc
    try:
        opened = key.decrypt(sealed, padding.PKCS1v15())
    except ValueError as exc:
        raise RandomKeyDecryptError(
            f"encrypt_random_key does not decrypt with the key of publickey_ver={publickey_ver}"
        ) from exc
    try:
        random_key = opened.decode("utf-8")
    except UnicodeDecodeError:
        random_key = ""
    if not random_key or not random_key.isprintable():
        raise RandomKeyDecryptError(
            f"encrypt_random_key decrypted to garbage: the private key of "
            f"publickey_ver={publickey_ver} does not match the public key WeCom used"
        )
    return random_key


def _require(
    data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, msgid: object = None
) -> Any:
    """Return ``data[name]`` if it has the expected type (bool never counts as int)."""
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        record = msgid if msgid is not None else data.get("msgid", "?")
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise MalformedArchiveRecord(
            f"record {record!r}: field {name!r} must be {expected}, got {value!r}"
        )
    return value


def parse_encrypted_record(item: Mapping[str, Any]) -> EncryptedRecord:
    """Validate one ``chatdata`` item before touching keys, so bad input fails clearly."""
    if not isinstance(item, Mapping):
        raise MalformedArchiveRecord(f"chatdata item must be an object, got {item!r}")
    record = EncryptedRecord(
        seq=_require(item, "seq", int),
        msgid=_require(item, "msgid", str),
        publickey_ver=_require(item, "publickey_ver", int),
        encrypt_random_key=_require(item, "encrypt_random_key", str),
        encrypt_chat_msg=_require(item, "encrypt_chat_msg", str),
    )
    if not record.msgid or record.seq < 0:
        raise MalformedArchiveRecord(f"chatdata item has an empty msgid or negative seq: {item!r}")
    return record


def _msgtime(data: Mapping[str, Any], name: str) -> dt.datetime:
    millis = _require(data, name, int)
    try:
        return dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise MalformedArchiveRecord(f"record {data.get('msgid')!r}: bad {name} {millis}") from exc


def parse_archived_message(data: Mapping[str, Any]) -> ArchivedMessage:
    """Validate a decrypted message and map it to :class:`ArchivedMessage`.

    ``switch`` records (a user switching enterprise) have no sender/recipients/msgtype and
    carry ``user``/``time`` instead; they are normalised to the same shape.
    """
    if not isinstance(data, Mapping):
        raise MalformedArchiveRecord(f"decrypted message must be an object, got {data!r}")
    msgid = _require(data, "msgid", str)
    if not msgid:
        raise MalformedArchiveRecord("decrypted message has an empty msgid")
    action = _require(data, "action", str)
    if action not in _ACTIONS:
        raise MalformedArchiveRecord(f"record {msgid!r}: unknown action {action!r}")
    external = msgid.endswith("_external")
    if action == "switch":
        return ArchivedMessage(
            msgid=msgid,
            action="switch",
            sender=_require(data, "user", str),
            tolist=(),
            roomid="",
            msgtime=_msgtime(data, "time"),
            msgtype="switch",
            text=None,
            sdkfileid=None,
            revoked_msgid=None,
            external=external,
            raw=dict(data),
        )
    tolist = _require(data, "tolist", list)
    if not all(isinstance(member, str) for member in tolist):
        raise MalformedArchiveRecord(f"record {msgid!r}: tolist must hold strings")
    roomid = data.get("roomid", "")
    if not isinstance(roomid, str):
        raise MalformedArchiveRecord(f"record {msgid!r}: roomid must be a string")
    msgtype = _require(data, "msgtype", str)
    body = data.get(msgtype)
    if body is not None and not isinstance(body, Mapping):
        raise MalformedArchiveRecord(f"record {msgid!r}: {msgtype!r} body must be an object")
    body = cast(Mapping[str, Any], body or {})
    text = sdkfileid = revoked = None
    if msgtype == "text":
        text = _require(body, "content", str, msgid=msgid)
    elif msgtype in MEDIA_MSGTYPES:
        sdkfileid = _require(body, "sdkfileid", str, msgid=msgid)
    elif msgtype == "revoke":
        revoked = body.get("pre_msgid")
        if revoked is not None and not isinstance(revoked, str):
            raise MalformedArchiveRecord(f"record {msgid!r}: revoke.pre_msgid must be a string")
    return ArchivedMessage(
        msgid=msgid,
        action=cast(Action, action),
        sender=_require(data, "from", str),
        tolist=tuple(tolist),
        roomid=roomid,
        msgtime=_msgtime(data, "msgtime"),
        msgtype=msgtype,
        text=text,
        sdkfileid=sdkfileid,
        revoked_msgid=revoked,
        external=external,
        raw=dict(data),
    )


def open_record(
    sdk: FinanceSdk, item: Mapping[str, Any], private_keys: Mapping[int, str]
) -> ArchivedMessage:
    """Validate, unwrap, decrypt and parse one ``chatdata`` item.

    Raises :class:`ArchiveRecordError` subclasses for problems with this record alone and
    :class:`~wecom.archive.sdk.ArchiveSdkError` when the SDK refuses to decrypt.
    """
    record = parse_encrypted_record(item)
    random_key = decrypt_random_key(
        record.encrypt_random_key, private_keys, publickey_ver=record.publickey_ver
    )
    message = parse_archived_message(
        sdk.decrypt_data(encrypt_key=random_key, encrypt_msg=record.encrypt_chat_msg)
    )
    if message.msgid != record.msgid:
        raise MalformedArchiveRecord(
            f"decrypted msgid {message.msgid!r} does not match record msgid {record.msgid!r}"
        )
    return message

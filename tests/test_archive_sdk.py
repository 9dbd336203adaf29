"""Session-archive binding end to end against the compiled stand-in of the vendor SDK."""

from __future__ import annotations

import ctypes
import datetime as dt
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.wecomsdk.build import (
    FIXTURE_ENV,
    MEDIA_PIECE_SIZE,
    FixtureRecord,
    build_test_sdk,
    sdk_settings_for,
    write_fixture,
)
from wecom.archive.decrypt import (
    ArchiveRecordError,
    MalformedArchiveRecord,
    RandomKeyDecryptError,
    UnknownKeyVersion,
    decrypt_random_key,
    open_record,
    parse_archived_message,
    parse_encrypted_record,
)
from wecom.archive.sdk import (
    ArchiveSdkError,
    FinanceSdk,
    MediaData,
    SdkLibrary,
    SdkLibraryConfig,
    Slice,
    sdk_library_load,
)

CORP_ID = "wwarchivetest"
SECRET = "archive-secret-for-tests"

SdkFactory = Callable[..., FinanceSdk]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> SdkLibrary:
    built = build_test_sdk(tmp_path_factory.mktemp("testsdk"))
    config = sdk_settings_for(built)
    return sdk_library_load(
        SdkLibraryConfig(
            path=config["ARCHIVE_SDK_LIBRARY"],
            allowed_dirs=tuple(config["ARCHIVE_SDK_ALLOWED_DIRS"]),
            trusted_uids=frozenset(config["ARCHIVE_SDK_TRUSTED_UIDS"]),
        )
    )


@pytest.fixture(scope="module")
def keys() -> dict[int, rsa.RSAPrivateKey]:
    return {
        version: rsa.generate_private_key(public_exponent=65537, key_size=2048)
        for version in (1, 2)
    }


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # "BEGIN RSA PRIVATE KEY", as WeCom docs
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def private_keys(keys: dict[int, rsa.RSAPrivateKey]) -> dict[int, str]:
    return {version: pem(key) for version, key in keys.items()}


@pytest.fixture
def make_sdk(
    library: SdkLibrary,
    keys: dict[int, rsa.RSAPrivateKey],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SdkFactory]:
    opened: list[FinanceSdk] = []

    def factory(
        records: list[FixtureRecord], *, secret: str = SECRET, **fixture_options: Any
    ) -> FinanceSdk:
        fixture = tmp_path / f"fixture{len(opened)}.txt"
        public_keys = {version: key.public_key() for version, key in keys.items()}
        public_keys[3] = keys[1].public_key()  # a version the consumer has no private key for
        write_fixture(
            fixture,
            records,
            public_keys=public_keys,
            corp_id=CORP_ID,
            secret=SECRET,
            **fixture_options,
        )
        monkeypatch.setenv(FIXTURE_ENV, str(fixture))
        sdk = FinanceSdk(library, corp_id=CORP_ID, secret=secret)
        opened.append(sdk)
        return sdk

    yield factory
    for sdk in opened:
        sdk.close()


def text_message(number: int, *, external: bool = False, **overrides: Any) -> dict[str, Any]:
    message = {
        "msgid": f"msg{number}" + ("_external" if external else ""),
        "action": "send",
        "from": "zhangsan",
        "tolist": ["lisi"],
        "roomid": "",
        "msgtime": 1_700_000_000_000 + number * 1000,
        "msgtype": "text",
        "text": {"content": f"第{number}条消息 message {number}"},
    }
    message.update(overrides)
    return message


def records(count: int, *, version: int = 1) -> list[FixtureRecord]:
    return [FixtureRecord(text_message(n), publickey_ver=version) for n in range(1, count + 1)]


def test_struct_layouts_match_the_vendor_header() -> None:
    # Given the header's Slice_t {char*; int} and MediaData_t {char*; int; char*; int; int}
    # Then the ctypes mirrors have the LP64 offsets a C compiler gives them
    assert (Slice.buf.offset, Slice.len.offset, ctypes.sizeof(Slice)) == (0, 8, 16)
    assert [getattr(MediaData, f).offset for f in ("outindexbuf", "out_len", "data")] == [0, 8, 16]
    assert (MediaData.data_len.offset, MediaData.is_finish.offset) == (24, 28)
    assert ctypes.sizeof(MediaData) == 32


def test_pages_start_after_seq_and_stop_at_limit(make_sdk: SdkFactory) -> None:
    # Given seven archived records
    sdk = make_sdk(records(7))
    # When pulling three at a time, each time from the highest seq seen so far
    cursor, pages = 0, []
    while True:
        page = sdk.get_chat_data(seq=cursor, limit=3)["chatdata"]
        pages.append([item["seq"] for item in page])
        if not page:
            break
        cursor = page[-1]["seq"]
    # Then every page starts at cursor + 1 and holds at most `limit` records
    assert pages == [[1, 2, 3], [4, 5, 6], [7], []]


@pytest.mark.parametrize("limit", [0, 1001])
def test_limit_outside_1_to_1000_is_rejected_before_calling_the_sdk(
    make_sdk: SdkFactory, limit: int
) -> None:
    sdk = make_sdk(records(1))
    with pytest.raises(ValueError, match="limit"):
        sdk.get_chat_data(seq=0, limit=limit)


def test_messages_decrypt_across_a_key_version_change(
    make_sdk: SdkFactory, private_keys: dict[int, str]
) -> None:
    # Given a stream whose public key version changes from 1 to 2 halfway
    stream = records(3, version=1) + [
        FixtureRecord(text_message(n), publickey_ver=2) for n in range(4, 7)
    ]
    sdk = make_sdk(stream)
    # When every record is opened with the private keys of both versions
    items = sdk.get_chat_data(seq=0, limit=100)["chatdata"]
    messages = [open_record(sdk, item, private_keys) for item in items]
    # Then all six decrypt, each with the key of its own version
    assert [item["publickey_ver"] for item in items] == [1, 1, 1, 2, 2, 2]
    assert [m.text for m in messages] == [f"第{n}条消息 message {n}" for n in range(1, 7)]
    assert messages[0].msgtime == dt.datetime(2023, 11, 14, 22, 13, 21, tzinfo=dt.UTC)
    assert messages[0].sender == "zhangsan" and messages[0].tolist == ("lisi",)


def test_record_of_a_version_without_private_key_raises_unknown_key_version(
    make_sdk: SdkFactory, private_keys: dict[int, str]
) -> None:
    sdk = make_sdk([FixtureRecord(text_message(1), publickey_ver=3)])
    item = sdk.get_chat_data(seq=0, limit=10)["chatdata"][0]
    with pytest.raises(UnknownKeyVersion, match="publickey_ver=3") as caught:
        open_record(sdk, item, private_keys)
    assert isinstance(caught.value, ArchiveRecordError)
    assert caught.value.version == 3


def test_wrong_private_key_or_bad_base64_raises_random_key_decrypt_error(
    make_sdk: SdkFactory, private_keys: dict[int, str]
) -> None:
    sdk = make_sdk(records(1, version=1))
    item = sdk.get_chat_data(seq=0, limit=10)["chatdata"][0]
    swapped = {1: private_keys[2]}
    with pytest.raises(RandomKeyDecryptError):
        decrypt_random_key(item["encrypt_random_key"], swapped, publickey_ver=1)
    with pytest.raises(RandomKeyDecryptError, match="base64"):
        decrypt_random_key("not base64!", private_keys, publickey_ver=1)


def test_recall_switch_media_and_external_messages_parse(
    make_sdk: SdkFactory, private_keys: dict[int, str]
) -> None:
    # Given a recall, an enterprise switch, an image and an external text in a group
    recall = text_message(1, action="recall", msgtype="revoke", revoke={"pre_msgid": "msg0"})
    del recall["text"]
    switch = {"msgid": "msg2", "action": "switch", "time": 1_700_000_002_000, "user": "wangwu"}
    image = text_message(3, msgtype="image", image={"sdkfileid": "FILE3", "filesize": 3})
    del image["text"]
    external = text_message(4, external=True, roomid="wrROOM", tolist=["lisi", "wmEXT"])
    sdk = make_sdk([FixtureRecord(m, publickey_ver=1) for m in (recall, switch, image, external)])
    # When they are opened
    items = sdk.get_chat_data(seq=0, limit=10)["chatdata"]
    got = [open_record(sdk, item, private_keys) for item in items]
    # Then each type exposes the fields the product uses
    assert (got[0].action, got[0].msgtype, got[0].revoked_msgid) == ("recall", "revoke", "msg0")
    assert got[0].text is None
    assert (got[1].action, got[1].sender, got[1].tolist, got[1].msgtype) == (
        "switch",
        "wangwu",
        (),
        "switch",
    )
    assert got[1].msgtime == dt.datetime(2023, 11, 14, 22, 13, 22, tzinfo=dt.UTC)
    assert (got[2].msgtype, got[2].sdkfileid, got[2].text) == ("image", "FILE3", None)
    assert got[3].external and got[3].roomid == "wrROOM"
    assert not any(m.external for m in got[:3])
    assert got[3].raw["tolist"] == ["lisi", "wmEXT"]


def test_media_with_nul_bytes_arrives_whole_in_pieces_of_at_most_512_kb(
    make_sdk: SdkFactory,
) -> None:
    # Given a 1.2 MB file that starts with and contains runs of NUL bytes
    rng = random.Random(20240606)
    content = b"\x00" * 64 + rng.randbytes(600_000) + b"\x00" * 4096 + rng.randbytes(600_000)
    sdk = make_sdk(records(1), media={"SDKFILEID_VIDEO": content})
    # When it is downloaded piece by piece
    pieces = list(sdk.iter_media(sdkfileid="SDKFILEID_VIDEO"))
    # Then no piece is truncated at a NUL and the pieces add up to the file
    assert len(pieces) == 3
    assert all(0 < len(piece) <= MEDIA_PIECE_SIZE for piece in pieces)
    assert pieces[0][:64] == b"\x00" * 64
    assert b"".join(pieces) == content


def test_media_errors_carry_the_sdk_code(make_sdk: SdkFactory) -> None:
    # GetMediaData calls: 1 = unknown file, 2 = first piece, 3 = second piece (fails)
    sdk = make_sdk(
        records(1), media={"FILE": b"\x00" * 2000}, media_piece_size=1000, media_errors={3: 10001}
    )
    with pytest.raises(ArchiveSdkError) as unknown:
        list(sdk.iter_media(sdkfileid="NO_SUCH_FILE"))
    assert unknown.value.code == 10005
    pieces = sdk.iter_media(sdkfileid="FILE")
    assert next(pieces) == b"\x00" * 1000
    with pytest.raises(ArchiveSdkError) as network:
        next(pieces)
    assert network.value.code == 10001 and network.value.retryable


def test_network_error_mid_stream_raises_10001_and_the_pull_can_resume(
    make_sdk: SdkFactory,
) -> None:
    # Given the second GetChatData call fails with a network error
    sdk = make_sdk(records(5), chat_errors={2: 10001})
    first = sdk.get_chat_data(seq=0, limit=2)["chatdata"]
    # When the next page is pulled
    with pytest.raises(ArchiveSdkError) as caught:
        sdk.get_chat_data(seq=first[-1]["seq"], limit=2)
    # Then the error says network, is retryable, and a retry from the same cursor works
    assert caught.value.code == 10001
    assert caught.value.retryable
    assert "network" in str(caught.value)
    retry = sdk.get_chat_data(seq=first[-1]["seq"], limit=2)["chatdata"]
    assert [item["seq"] for item in retry] == [3, 4]


def test_undecryptable_record_raises_10006_and_others_still_open(
    make_sdk: SdkFactory, private_keys: dict[int, str]
) -> None:
    sdk = make_sdk(records(3), undecryptable_msgids={"msg2"})
    items = sdk.get_chat_data(seq=0, limit=10)["chatdata"]
    assert open_record(sdk, items[0], private_keys).msgid == "msg1"
    with pytest.raises(ArchiveSdkError) as caught:
        open_record(sdk, items[1], private_keys)
    assert caught.value.code == 10006 and not caught.value.retryable
    assert open_record(sdk, items[2], private_keys).msgid == "msg3"


def test_empty_encrypt_key_is_refused_by_decrypt_data(make_sdk: SdkFactory) -> None:
    sdk = make_sdk(records(1))
    with pytest.raises(ArchiveSdkError) as caught:
        sdk.decrypt_data(encrypt_key="", encrypt_msg="AAAA")
    assert caught.value.code == 10008


def test_errcode_in_the_returned_json_raises(make_sdk: SdkFactory) -> None:
    sdk = make_sdk(records(1), secret="wrong-secret")
    with pytest.raises(ArchiveSdkError) as caught:
        sdk.get_chat_data(seq=0, limit=10)
    assert caught.value.code == 40001


def test_init_failure_raises(library: SdkLibrary, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FIXTURE_ENV, raising=False)
    with pytest.raises(ArchiveSdkError) as caught:
        FinanceSdk(library, corp_id=CORP_ID, secret=SECRET)
    assert caught.value.code == 10003


def test_instance_refuses_other_threads_and_use_after_close(make_sdk: SdkFactory) -> None:
    sdk = make_sdk(records(1))
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            sdk.get_chat_data(seq=0, limit=1)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=pull)
    worker.start()
    worker.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "thread" in str(errors[0])
    sdk.close()
    sdk.close()
    with pytest.raises(RuntimeError, match="closed"):
        sdk.get_chat_data(seq=0, limit=1)


def test_context_manager_closes(library: Path, make_sdk: SdkFactory) -> None:
    with make_sdk(records(1)) as sdk:
        assert sdk.get_chat_data(seq=0, limit=1)["chatdata"]
    with pytest.raises(RuntimeError, match="closed"):
        sdk.get_chat_data(seq=0, limit=1)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"msgid": ""}, "empty msgid"),
        ({"action": "forward"}, "unknown action"),
        ({"msgtime": "1700000000000"}, "msgtime"),
        ({"msgtime": True}, "msgtime"),
        ({"tolist": "lisi"}, "tolist"),
        ({"tolist": ["lisi", 3]}, "tolist"),
        ({"from": None}, "'from'"),
        ({"roomid": 5}, "roomid"),
        ({"text": {"content": 12}}, "content"),
        ({"text": "plain"}, "body"),
        ({"msgtype": "image", "image": {}}, "sdkfileid"),
    ],
)
def test_malformed_message_raises(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(MalformedArchiveRecord, match=problem):
        parse_archived_message(text_message(1, **change))


def test_malformed_chatdata_item_raises() -> None:
    item = {"seq": 1, "msgid": "m", "publickey_ver": 1, "encrypt_chat_msg": "x"}
    with pytest.raises(MalformedArchiveRecord, match="encrypt_random_key"):
        parse_encrypted_record(item)
    with pytest.raises(MalformedArchiveRecord, match="publickey_ver"):
        parse_encrypted_record({**item, "encrypt_random_key": "k", "publickey_ver": "1"})
    with pytest.raises(MalformedArchiveRecord):
        parse_archived_message(["not", "an", "object"])  # type: ignore[arg-type]

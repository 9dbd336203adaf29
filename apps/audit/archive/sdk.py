"""ctypes binding for the vendor session-archive library ``libWeWorkFinanceSdk_C.so``.

The library cannot be shipped or reimplemented, so the product loads the customer's copy.
Prototypes and struct layouts follow the vendor header ``WeWorkFinanceSdk_C.h`` exactly;
binary buffers are read as ``c_void_p`` plus length because ``c_char_p`` stops at NUL.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self

__all__ = [
    "BINDING_ERROR",
    "MAX_CHAT_LIMIT",
    "SDK_ERRORS",
    "ArchiveSdkError",
    "FinanceSdk",
    "MediaData",
    "Slice",
]

MAX_CHAT_LIMIT = 1000
BINDING_ERROR = -1
"""Code of errors this binding detects itself (bad JSON, a stalled media download)."""

SDK_ERRORS: dict[int, str] = {
    10000: "invalid request parameters (corp id, secret, limit, sdkfileid or indexbuf)",
    10001: "network error while calling WeCom (check connectivity and proxy settings)",
    10002: "could not parse the data WeCom returned",
    10003: "system error inside the SDK",
    10004: "encryption failed because of a key error",
    10005: "unknown or invalid sdkfileid",
    10006: "decryption failed (is encrypt_key the RSA-decrypted random key?)",
    10007: "no private key for the message's encryption version; upload the key pair again",
    10008: "could not parse encrypt_key",
    10009: "caller IP is not in the trusted IP list of the archive settings",
    10010: "data expired: only the last 5 days can be pulled",
    10011: "SSL certificate error",
}
_RETRYABLE = frozenset({10001, 10002, 10003})


class ArchiveSdkError(Exception):
    """A non-zero return code from the SDK, or a non-zero ``errcode`` in its JSON."""

    def __init__(self, code: int, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        message = SDK_ERRORS.get(code, "session archive SDK error")
        super().__init__(f"[{code}] {message}" + (f": {detail}" if detail else ""))

    @property
    def retryable(self) -> bool:
        """True for the transient codes (network, parse, system) worth retrying later."""
        return self.code in _RETRYABLE


class Slice(ctypes.Structure):
    """``Slice_t`` from the vendor header: an SDK-owned buffer and its length."""

    _fields_ = [("buf", ctypes.c_void_p), ("len", ctypes.c_int)]


class MediaData(ctypes.Structure):
    """``MediaData_t`` from the vendor header: one piece of a media file."""

    _fields_ = [
        ("outindexbuf", ctypes.c_void_p),
        ("out_len", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("data_len", ctypes.c_int),
        ("is_finish", ctypes.c_int),
    ]


_SlicePtr = ctypes.POINTER(Slice)
_MediaDataPtr = ctypes.POINTER(MediaData)
_c_char_p, _c_int, _c_void_p = ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p

# name: (restype, argtypes), one entry per function the header exports.
_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "NewSdk": (_c_void_p, []),
    "Init": (_c_int, [_c_void_p, _c_char_p, _c_char_p]),
    "DestroySdk": (None, [_c_void_p]),
    "GetChatData": (
        _c_int,
        [_c_void_p, ctypes.c_ulonglong, ctypes.c_uint, _c_char_p, _c_char_p, _c_int, _SlicePtr],
    ),
    "GetMediaData": (
        _c_int,
        [_c_void_p, _c_char_p, _c_char_p, _c_char_p, _c_char_p, _c_int, _MediaDataPtr],
    ),
    "DecryptData": (_c_int, [_c_char_p, _c_char_p, _SlicePtr]),
    "NewSlice": (_SlicePtr, []),
    "FreeSlice": (None, [_SlicePtr]),
    "GetContentFromSlice": (_c_void_p, [_SlicePtr]),
    "GetSliceLen": (_c_int, [_SlicePtr]),
    "NewMediaData": (_MediaDataPtr, []),
    "FreeMediaData": (None, [_MediaDataPtr]),
    "GetOutIndexBuf": (_c_void_p, [_MediaDataPtr]),
    "GetData": (_c_void_p, [_MediaDataPtr]),
    "GetIndexLen": (_c_int, [_MediaDataPtr]),
    "GetDataLen": (_c_int, [_MediaDataPtr]),
    "IsMediaDataFinish": (_c_int, [_MediaDataPtr]),
}


def _load(library_path: str) -> ctypes.CDLL:
    library = ctypes.CDLL(library_path)
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            function = getattr(library, name)
        except AttributeError as exc:
            raise OSError(f"{library_path} does not export {name}()") from exc
        function.restype = restype
        function.argtypes = argtypes
    return library


def _read(pointer: int | None, length: int) -> bytes:
    """Copy ``length`` bytes from an SDK-owned buffer before it is freed."""
    if not pointer or length <= 0:
        return b""
    return ctypes.string_at(pointer, length)


def _parse_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveSdkError(BINDING_ERROR, f"{what} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ArchiveSdkError(BINDING_ERROR, f"{what} is not a JSON object")
    return data


class FinanceSdk:
    """One initialised vendor SDK handle.

    The vendor SDK is not documented as thread-safe, so an instance belongs to the thread
    that created it (one instance per worker thread); any call from another thread raises
    ``RuntimeError`` instead of corrupting the handle. ``decrypt_data`` is stateless in C
    but goes through the same check to keep the rule simple.
    """

    def __init__(self, library_path: str, *, corp_id: str, secret: str) -> None:
        self._owner = threading.get_ident()
        self._lib = _load(library_path)
        self._sdk: int | None = self._lib.NewSdk()
        if not self._sdk:
            raise ArchiveSdkError(BINDING_ERROR, "NewSdk() returned NULL")
        ret = self._lib.Init(self._sdk, corp_id.encode(), secret.encode())
        if ret != 0:
            self.close()
            raise ArchiveSdkError(ret, "Init() failed")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Destroy the vendor handle; safe to call twice."""
        self._check_thread()
        if self._sdk:
            self._lib.DestroySdk(self._sdk)
            self._sdk = None

    def get_chat_data(
        self, *, seq: int, limit: int, proxy: str = "", passwd: str = "", timeout: int = 30
    ) -> dict[str, Any]:
        """Pull up to ``limit`` encrypted records after ``seq`` (results start at seq+1).

        Returns the parsed JSON (``errcode``, ``errmsg``, ``chatdata``); a non-zero return
        code or ``errcode`` raises :class:`ArchiveSdkError` so callers never mistake an
        error page for an empty one and advance their cursor.
        """
        if not 1 <= limit <= MAX_CHAT_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_CHAT_LIMIT}, got {limit}")
        if seq < 0:
            raise ValueError(f"seq must not be negative, got {seq}")
        handle = self._handle()
        raw = self._call_with_slice(
            lambda out: self._lib.GetChatData(
                handle, seq, limit, proxy.encode(), passwd.encode(), timeout, out
            ),
            "GetChatData()",
        )
        data = _parse_json(raw, "GetChatData() result")
        errcode = data.get("errcode", 0)
        if errcode != 0:
            code = errcode if isinstance(errcode, int) else BINDING_ERROR
            raise ArchiveSdkError(code, str(data.get("errmsg", "")))
        if not isinstance(data.get("chatdata", []), list):
            raise ArchiveSdkError(BINDING_ERROR, "GetChatData() chatdata is not a list")
        data.setdefault("chatdata", [])
        return data

    def decrypt_data(self, *, encrypt_key: str, encrypt_msg: str) -> dict[str, Any]:
        """Decrypt one ``encrypt_chat_msg`` with its RSA-decrypted random key."""
        self._handle()
        raw = self._call_with_slice(
            lambda out: self._lib.DecryptData(encrypt_key.encode(), encrypt_msg.encode(), out),
            "DecryptData()",
        )
        return _parse_json(raw, "DecryptData() result")

    def iter_media(
        self, *, sdkfileid: str, proxy: str = "", passwd: str = "", timeout: int = 30
    ) -> Iterator[bytes]:
        """Yield a media file piece by piece (the SDK serves at most 512 KB per call).

        Streaming the pieces lets callers write large videos to storage without holding
        them in memory; a failure mid-way raises and the caller restarts the file.
        """
        if not sdkfileid:
            raise ValueError("sdkfileid must not be empty")
        index = b""
        while True:
            handle = self._handle()
            media = self._lib.NewMediaData()
            if not media:
                raise ArchiveSdkError(BINDING_ERROR, "NewMediaData() returned NULL")
            try:
                ret = self._lib.GetMediaData(
                    handle,
                    index,
                    sdkfileid.encode(),
                    proxy.encode(),
                    passwd.encode(),
                    timeout,
                    media,
                )
                if ret != 0:
                    raise ArchiveSdkError(ret, f"GetMediaData() for {sdkfileid!r}")
                piece = _read(self._lib.GetData(media), self._lib.GetDataLen(media))
                next_index = _read(self._lib.GetOutIndexBuf(media), self._lib.GetIndexLen(media))
                finished = bool(self._lib.IsMediaDataFinish(media))
            finally:
                self._lib.FreeMediaData(media)
            if not finished and (not next_index or next_index == index):
                raise ArchiveSdkError(BINDING_ERROR, "GetMediaData() made no progress")
            yield piece
            if finished:
                return
            index = next_index

    def _call_with_slice(self, call: Callable[[Any], int], what: str) -> bytes:
        out = self._lib.NewSlice()
        if not out:
            raise ArchiveSdkError(BINDING_ERROR, "NewSlice() returned NULL")
        try:
            ret = call(out)
            if ret != 0:
                raise ArchiveSdkError(ret, f"{what} failed")
            return _read(self._lib.GetContentFromSlice(out), self._lib.GetSliceLen(out))
        finally:
            self._lib.FreeSlice(out)

    def _handle(self) -> int:
        self._check_thread()
        if not self._sdk:
            raise RuntimeError("FinanceSdk is closed")
        return self._sdk

    def _check_thread(self) -> None:
        if threading.get_ident() != self._owner:
            raise RuntimeError(
                "FinanceSdk used from a thread other than the one that created it; "
                "create one instance per thread"
            )

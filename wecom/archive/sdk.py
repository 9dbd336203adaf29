"""ctypes binding for the vendor session-archive library ``libWeWorkFinanceSdk_C.so``.

The library cannot be shipped or reimplemented, so the product loads the customer's copy.
Prototypes and struct layouts follow the vendor header ``WeWorkFinanceSdk_C.h`` exactly;
binary buffers are read as ``c_void_p`` plus length because ``c_char_p`` stops at NUL.

Loading a shared library runs its constructors before any Python check, so which file is
loaded is deployment configuration (:class:`SdkLibraryConfig`), never data from the
database or a form: it must lie in an allow-listed directory, it and every directory below
that one must belong to a trusted owner (root) and be writable by nobody else, and it may
be pinned by SHA-256. The file is checked and loaded through one open descriptor, so it
cannot be swapped between the check and ``dlopen``.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import itertools
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

__all__ = [
    "BINDING_ERROR",
    "MAX_CHAT_LIMIT",
    "SDK_ERRORS",
    "ArchiveSdkError",
    "FinanceSdk",
    "MediaData",
    "SdkLibrary",
    "SdkLibraryConfig",
    "SdkLibraryRefused",
    "Slice",
    "sdk_library_load",
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


@dataclass(frozen=True, slots=True)
class SdkLibraryConfig:
    """Where the vendor library may come from: set by the deployment, not by the admin."""

    path: str
    allowed_dirs: tuple[str, ...]
    sha256: str = ""
    trusted_uids: frozenset[int] = field(default_factory=lambda: frozenset({0}))


class SdkLibraryRefused(ArchiveSdkError):
    """The configured library failed a check and was not loaded (its code never ran)."""

    def __init__(self, detail: str) -> None:
        super().__init__(BINDING_ERROR, detail)


@dataclass(frozen=True, slots=True)
class SdkLibrary:
    """A vendor library that passed :func:`sdk_library_load`'s checks, with its prototypes."""

    path: str
    sha256: str
    cdll: ctypes.CDLL


def _owned_safely(info: os.stat_result, trusted_uids: frozenset[int]) -> bool:
    return info.st_uid in trusted_uids and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _checked_path(config: SdkLibraryConfig) -> str:
    """The library's real path, if it lies in an allowed directory that nobody can tamper."""
    if not config.path:
        raise SdkLibraryRefused(
            "no vendor SDK configured: set ARCHIVE_SDK_LIBRARY on the archive workers"
        )
    if not os.path.isabs(config.path):
        raise SdkLibraryRefused("ARCHIVE_SDK_LIBRARY must be an absolute path")
    real = os.path.realpath(config.path)
    for allowed in config.allowed_dirs:
        root = os.path.realpath(allowed)
        if not os.path.isabs(allowed) or os.path.commonpath([root, real]) != root or real == root:
            continue
        directories, directory = [root], root
        for part in os.path.relpath(os.path.dirname(real), root).split(os.sep):
            if part != ".":
                directory = os.path.join(directory, part)
                directories.append(directory)
        for directory in directories:
            try:
                info = os.lstat(directory)
            except OSError as exc:
                raise SdkLibraryRefused(f"{directory} cannot be read: {exc.strerror}") from exc
            if not stat.S_ISDIR(info.st_mode) or not _owned_safely(info, config.trusted_uids):
                raise SdkLibraryRefused(
                    f"{directory} must be a directory owned by root and writable only by it"
                )
        return real
    raise SdkLibraryRefused(
        "ARCHIVE_SDK_LIBRARY is not inside a directory listed in ARCHIVE_SDK_ALLOWED_DIRS"
    )


def sdk_library_load(config: SdkLibraryConfig) -> SdkLibrary:
    """Check the configured vendor library and load it; raise SdkLibraryRefused before
    any of its code runs when it is outside the allow-list, writable by others, or not the
    pinned build."""
    real = _checked_path(config)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SdkLibraryRefused(f"{real} cannot be opened: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not _owned_safely(info, config.trusted_uids):
            raise SdkLibraryRefused(f"{real} must be a file owned by root and writable only by it")
        digest = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        actual = digest.hexdigest()
        expected = config.sha256.strip().lower()
        if expected and not hmac.compare_digest(actual, expected):
            raise SdkLibraryRefused(
                f"{real} has SHA-256 {actual}, not the ARCHIVE_SDK_SHA256 it is pinned to"
            )
        identity = (info.st_dev, info.st_ino, actual)
        with _LOADED_LOCK:
            if identity not in _LOADED:
                _LOADED[identity] = _dlopen_checked(fd, real, actual, index=next(_DLOPENS))
            return _LOADED[identity]
    finally:
        os.close(fd)


# Libraries loaded in this process, by (device, inode, SHA-256): dlopen keeps them mapped
# anyway, and a second dlopen of the same name would return the first library.
_LOADED: dict[tuple[int, int, str], SdkLibrary] = {}
_LOADED_LOCK = threading.Lock()
_DLOPENS = itertools.count()


def _dlopen_checked(fd: int, real: str, sha256: str, *, index: int) -> SdkLibrary:
    """dlopen the very file that was checked (its descriptor), not a path that could point
    elsewhere by now. The name is unique per library: glibc returns an already loaded
    object when the name matches, and descriptor numbers are reused."""
    cdll = ctypes.CDLL("/proc/self/fd/" + "./" * index + str(fd))
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            function = getattr(cdll, name)
        except AttributeError as exc:
            raise OSError(f"{real} does not export {name}()") from exc
        function.restype = restype
        function.argtypes = argtypes
    return SdkLibrary(path=real, sha256=sha256, cdll=cdll)


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

    def __init__(self, library: SdkLibrary, *, corp_id: str, secret: str) -> None:
        if not isinstance(library, SdkLibrary):
            raise TypeError("FinanceSdk needs a library checked by sdk_library_load()")
        self._owner = threading.get_ident()
        self._lib = library.cdll
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

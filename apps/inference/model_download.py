"""Downloading a GGUF into the models folder from a URL, checked against its SHA-256.

Models are gigabytes and links drop, so the bytes go to `<name>.part` and a new attempt
resumes it with an HTTP Range request; the file takes its final name only once its digest
matches, so a worker can never load half a model. Progress lives in the cache, keyed by a
download id, for the admin page to poll.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import threading
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.core.cache import cache

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
TIMEOUT_SECONDS = 60
PROGRESS_TTL_SECONDS = 24 * 3600
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.gguf$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DownloadFailed(Exception):
    """`code` names the failure for the admin, which words it in the reader's language."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


def _progress_key(download_id: str) -> str:
    return f"wecom_ai:model-download:{download_id}"


def model_download_progress(*, download_id: str) -> dict[str, Any] | None:
    return cache.get(_progress_key(download_id))


def model_download(
    *, url: str, sha256: str, target: Path, progress: Callable[[int, int | None], None]
) -> Path:
    """Fetch `url` into `target` (resuming `target.part`), or raise DownloadFailed."""
    if not url.startswith(("https://", "http://")):
        raise DownloadFailed("scheme", "only http and https URLs")
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    done = 0
    if part.exists():
        with part.open("rb") as handle:
            while chunk := handle.read(CHUNK_BYTES):
                digest.update(chunk)
                done += len(chunk)
    headers = {"Range": f"bytes={done}-"} if done else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - scheme checked above
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)  # noqa: S310
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadFailed("fetch", str(exc)) from exc
    with response:
        if done and response.status != 206:  # the server ignored the range: start over
            digest, done = hashlib.sha256(), 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else None
        progress(done, total)
        with part.open("ab" if done else "wb") as handle:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    progress(done, total)
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadFailed("interrupted", f"after {done} bytes") from exc
    if total is not None and done < total:  # the connection closed early: keep it to resume
        raise DownloadFailed("interrupted", f"after {done} bytes")
    if digest.hexdigest() != sha256:
        part.unlink(missing_ok=True)  # a wrong file must not be resumed either
        raise DownloadFailed("digest")
    with part.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            part.unlink(missing_ok=True)
            raise DownloadFailed("not_gguf")
    part.replace(target)
    return target


def model_download_start(*, url: str, sha256: str, directory: Path, file_name: str) -> str:
    """Start the download in a background thread of this process; its id for the progress."""
    download_id = uuid.uuid4().hex
    key = _progress_key(download_id)
    target = directory / file_name
    state: dict[str, Any] = {"state": "running", "done": 0, "total": None, "path": str(target)}
    cache.set(key, state, PROGRESS_TTL_SECONDS)

    def report(done: int, total: int | None) -> None:
        state.update(done=done, total=total)
        cache.set(key, state, PROGRESS_TTL_SECONDS)

    def run() -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            model_download(url=url, sha256=sha256, target=target, progress=report)
            state["state"] = "done"
        except DownloadFailed as exc:
            logger.warning("model download %s failed: %s", download_id, exc)
            state.update(state="failed", error=exc.code)
        except Exception:  # any other failure still ends the progress shown
            logger.exception("model download %s failed", download_id)
            state.update(state="failed", error="other")
        cache.set(key, state, PROGRESS_TTL_SECONDS)

    threading.Thread(target=run, name=f"model-download-{download_id}", daemon=True).start()
    return download_id

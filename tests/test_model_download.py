"""Downloading a model from a URL with its SHA-256: resumed, verified, shown in the admin.

The model is served by a loopback HTTP server that honours (or ignores) Range requests and
can cut the first response short, as a dropped link would.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from apps.inference.model_download import DownloadFailed, model_download

pytestmark = pytest.mark.django_db

BODY = b"GGUF" + bytes(range(256)) * 4096  # about 1 MiB
DIGEST = hashlib.sha256(BODY).hexdigest()
DOWNLOAD = "admin:inference_modelprofile_download"


class ModelServer(http.server.ThreadingHTTPServer):
    body = BODY
    honour_range = True
    cut_first_at: int | None = None
    ranges: list[str | None]


class Handler(http.server.BaseHTTPRequestHandler):
    server: ModelServer

    def do_GET(self) -> None:
        body, start = self.server.body, 0
        requested = self.headers.get("Range")
        self.server.ranges.append(requested)
        if requested and self.server.honour_range:
            start = int(requested.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        cut, self.server.cut_first_at = self.server.cut_first_at, None
        self.wfile.write(body[start:cut] if cut else body[start:])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ModelServer]:
    httpd = ModelServer(("127.0.0.1", 0), Handler)
    httpd.ranges = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(server: ModelServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/model.gguf"


def test_a_download_lands_under_its_name_with_progress(server, tmp_path):
    seen: list[tuple[int, int | None]] = []
    target = tmp_path / "m.gguf"
    model_download(
        url=_url(server), sha256=DIGEST, target=target, progress=lambda *a: seen.append(a)
    )
    assert target.read_bytes() == BODY
    assert seen[0] == (0, len(BODY)) and seen[-1] == (len(BODY), len(BODY))
    assert not (tmp_path / "m.gguf.part").exists()


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    server.cut_first_at = 300_000
    target = tmp_path / "m.gguf"
    with pytest.raises(DownloadFailed, match="interrupted"):
        model_download(url=_url(server), sha256=DIGEST, target=target, progress=lambda *a: None)
    assert not target.exists()
    part = tmp_path / "m.gguf.part"
    assert part.stat().st_size == 300_000

    model_download(url=_url(server), sha256=DIGEST, target=target, progress=lambda *a: None)
    assert server.ranges == [None, "bytes=300000-"]
    assert target.read_bytes() == BODY


def test_a_server_that_ignores_the_range_is_read_from_the_start(server, tmp_path):
    server.honour_range = False
    (tmp_path / "m.gguf.part").write_bytes(b"stale bytes from elsewhere")
    target = tmp_path / "m.gguf"
    model_download(url=_url(server), sha256=DIGEST, target=target, progress=lambda *a: None)
    assert target.read_bytes() == BODY


def test_a_wrong_digest_discards_the_file(server, tmp_path):
    target = tmp_path / "m.gguf"
    with pytest.raises(DownloadFailed, match="digest"):
        model_download(url=_url(server), sha256="0" * 64, target=target, progress=lambda *a: None)
    assert not target.exists() and not (tmp_path / "m.gguf.part").exists()


def test_a_file_that_is_not_a_gguf_is_discarded(server, tmp_path):
    server.body = b"<html>login page</html>"
    digest = hashlib.sha256(server.body).hexdigest()
    with pytest.raises(DownloadFailed, match="not_gguf"):
        model_download(
            url=_url(server), sha256=digest, target=tmp_path / "m.gguf", progress=lambda *a: None
        )


def test_other_schemes_are_refused(tmp_path):
    with pytest.raises(DownloadFailed):
        model_download(
            url="file:///etc/passwd", sha256=DIGEST, target=tmp_path / "m.gguf", progress=print
        )


def test_the_admin_downloads_into_the_models_folder_and_shows_progress(
    admin_client, server, settings, tmp_path
):
    settings.MODELS_DIR = str(tmp_path / "models")
    data = {"url": _url(server), "sha256": DIGEST.upper(), "file_name": "new-model.gguf"}
    response = admin_client.post(reverse(DOWNLOAD), data)
    assert response.status_code == 302
    download_id = response["Location"].split("download=")[1]
    page = admin_client.get(response["Location"]).content.decode()
    progress_url = reverse(f"{DOWNLOAD}_progress", args=[download_id])
    assert f'data-progress-url="{progress_url}"' in page

    deadline = time.monotonic() + 30
    while (state := admin_client.get(progress_url).json())["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state["state"] == "done", state
    assert Path(settings.MODELS_DIR, "new-model.gguf").read_bytes() == BODY
    assert "new-model.gguf" in state["text"]
    # The new file is offered when a profile is added
    add = admin_client.get(reverse("admin:inference_modelprofile_add")).content.decode()
    assert str(Path(settings.MODELS_DIR, "new-model.gguf")) in add


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "xyz"),
        ("sha256", "g" * 64),
        ("file_name", "../escape.gguf"),
        ("file_name", "model.bin"),
        ("url", "ftp://example.com/m.gguf"),
    ],
)
def test_bad_download_input_is_refused(admin_client, settings, tmp_path, field, value):
    settings.MODELS_DIR = str(tmp_path)
    data = {"url": "http://127.0.0.1:9/m.gguf", "sha256": DIGEST, "file_name": "m.gguf"}
    data[field] = value
    response = admin_client.post(reverse(DOWNLOAD), data)
    assert response.status_code == 200
    assert response.context["form"].errors[field]


def test_an_existing_file_is_not_overwritten(admin_client, settings, tmp_path):
    settings.MODELS_DIR = str(tmp_path)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    data = {"url": "http://127.0.0.1:9/m.gguf", "sha256": DIGEST, "file_name": "m.gguf"}
    response = admin_client.post(reverse(DOWNLOAD), data)
    assert response.context["form"].errors["file_name"]


def test_downloading_is_for_superusers_only(client):
    anonymous = client.get(reverse(DOWNLOAD))
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    clerk = User.objects.create_user("clerk", password="x-Very-Long-Pass-1", is_staff=True)
    staff = Client()
    staff.force_login(clerk)
    assert staff.get(reverse(DOWNLOAD)).status_code == 403
    assert staff.get(reverse(f"{DOWNLOAD}_progress", args=["abc"])).status_code == 403


def test_an_unknown_download_is_not_found(admin_client):
    assert admin_client.get(reverse(f"{DOWNLOAD}_progress", args=["abc"])).status_code == 404


def test_the_profile_form_links_the_download_page_for_superusers(admin_client):
    page = admin_client.get(reverse("admin:inference_modelprofile_add")).content.decode()
    assert f'href="{reverse(DOWNLOAD)}"' in page


def test_a_failed_download_says_why_in_the_readers_language(
    admin_client, server, settings, tmp_path
):
    settings.MODELS_DIR = str(tmp_path)
    data = {"url": _url(server), "sha256": "0" * 64, "file_name": "m.gguf"}
    response = admin_client.post(reverse(DOWNLOAD), data)
    progress_url = reverse(f"{DOWNLOAD}_progress", args=[response["Location"].split("=")[1]])
    deadline = time.monotonic() + 30
    while (state := admin_client.get(progress_url).json())["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state["error"] == "digest"
    zh = admin_client.get(progress_url, HTTP_ACCEPT_LANGUAGE="zh-hans").json()["text"]
    assert zh == "失败：SHA-256 不匹配，文件已丢弃。"


def test_progress_is_worded_with_sizes_and_percent():
    from django.utils import translation

    from apps.inference.admin_setup import download_text

    with translation.override("zh-hans"):
        text = download_text({"state": "running", "done": 512 * 1024, "total": 2 * 1024 * 1024})
    assert text.replace("\xa0", " ") == "正在下载：512.0 KB / 2.0 MB（25%）"
    with translation.override("en"):
        text = download_text({"state": "running", "done": 1024, "total": None})
    assert text.replace("\xa0", " ") == "Downloading: 1.0 KB"

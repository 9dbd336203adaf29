"""The knowledge base workspace in a real headless chromium: drop two files, watch them
index (a real ingest worker, the real embedding model), disable a passage, test retrieval.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from apps.knowledge.models import Chunk, Document, KnowledgeBase
from tests.browser import Page, browser_tab

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LEAVE = (
    "# 休假制度\n\n## 年假\n\n员工每年可以享受带薪休假五天。\n\n## 病假\n\n病假需要提交医院证明。\n"
)
IT = (
    "# IT 服务\n\n## 电脑\n\n办公电脑出现故障时，请联系IT服务台更换。\n\n"
    "## VPN\n\n在家办公时请先连接VPN。\n"
)

ROWS = """[...document.querySelectorAll('#kb-documents tbody tr[data-id]')].map(tr => [
  tr.dataset.status, tr.querySelector('.kb-doc-stage').textContent.trim(),
  tr.querySelector('.kb-doc-passages').textContent.trim()])"""


@pytest.fixture(autouse=True)
def _media(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    yield from browser_tab(request)  # a screenshot in var/screenshots when the test fails


def navigating(page: Page, action: str) -> None:
    """Run `action` (JavaScript that leaves the page) and wait for the next page to load."""
    page.evaluate("window.__leaving = true")
    page.evaluate(action)
    page.wait_for("window.__leaving === undefined && document.readyState === 'complete'")


def test_drop_two_files_watch_them_index_disable_a_passage_and_test_retrieval(
    live_server, start_worker, page
):
    start_worker(queues="ingest", MEDIA_ROOT=settings.MEDIA_ROOT)
    admin = User.objects.create_superuser("admin", "admin@example.com", "x-Very-Long-Pass-1")
    kb = KnowledgeBase.objects.create(name="人事", slug="hr")
    client = Client()
    client.force_login(admin)
    page.send(
        "Network.setCookie",
        name=settings.SESSION_COOKIE_NAME,
        value=client.cookies[settings.SESSION_COOKIE_NAME].value,
        url=live_server.url,
    )
    kb_url = live_server.url + reverse("admin:knowledge_knowledgebase_change", args=[kb.pk])
    page.goto(kb_url)
    assert page.evaluate("document.querySelector('#kb-files').accept").startswith(".csv,.docx")

    # When two files are dropped on the upload area
    page.evaluate(
        f"""(() => {{
        const data = new DataTransfer();
        data.items.add(new File([{json.dumps(LEAVE)}], 'leave.md', {{type: 'text/markdown'}}));
        data.items.add(new File([{json.dumps(IT)}], 'it.md', {{type: 'text/markdown'}}));
        document.getElementById('kb-dropzone').dispatchEvent(
            new DragEvent('drop', {{dataTransfer: data, bubbles: true, cancelable: true}}));
        return true;
    }})()"""
    )
    # Then both are listed while they index, and the rows update until both are ready
    seen: list[list[list[str]]] = []
    deadline = time.monotonic() + 120
    while True:
        rows = page.evaluate(ROWS)
        if not seen or rows != seen[-1]:
            seen.append(rows)
        if len(rows) == 2 and all(row[0] == "ready" for row in rows):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.1)
    assert any(row[0] in ("pending", "processing") for rows in seen for row in rows), seen
    assert all(row[1] == "" and int(row[2]) >= 2 for row in seen[-1]), seen
    results = page.evaluate("[...document.querySelectorAll('#kb-upload-results li')].length")
    assert results == 2
    assert page.evaluate("document.querySelectorAll('#kb-upload-results .kb-error').length") == 0

    # When a passage of the leave rules is disabled on the document's passages page
    leave = Document.objects.get(original_filename="leave.md")
    sick = Chunk.objects.get(document=leave, text__contains="医院证明")
    navigating(
        page,
        f"document.querySelector('tr[data-id=\"{leave.pk}\"] .kb-doc-passages a').click()",
    )
    assert "医院证明" in page.evaluate(f"document.getElementById('passage-{sick.pk}').textContent")
    navigating(page, f"document.querySelector('#passage-{sick.pk} .kb-passage-toggle').click()")
    assert page.evaluate(
        f"document.getElementById('passage-{sick.pk}').classList.contains('kb-passage-disabled')"
    )
    sick.refresh_from_db()
    assert not sick.enabled

    # Then the retrieval test on the knowledge base page no longer finds it
    page.goto(kb_url)
    page.evaluate(
        """(() => {
        document.getElementById('kb-question').value = '病假 医院证明';
        document.getElementById('kb-reason').value = 'browser test';
        document.querySelector('#kb-retrieval input[type=submit]').click();
        return true;
    })()"""
    )
    hits = page.wait_for(
        """(() => { const hits = [...document.querySelectorAll('#kb-retrieval-results .kb-hit')];
        return hits.length ? hits.map(hit => [hit.querySelector('a').getAttribute('href'),
            hit.querySelector('.kb-hit-meta').textContent]) : null; })()"""
    )
    assert hits, hits
    assert not any(href.endswith(f"#passage-{sick.pk}") for href, _ in hits), hits
    assert all(any(char.isdigit() for char in meta) for _, meta in hits), hits

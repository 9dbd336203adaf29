"""A headless Debian `chromium` driven over the DevTools protocol, for the browser tests.

The protocol is JSON over a WebSocket, which the `websockets` package (a runtime
dependency already) speaks, so no browser-automation library or downloaded driver is
needed. Only loopback is used: the DevTools port and the live server are both local.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect


class BrowserError(AssertionError):
    pass


class Page:
    """One tab: navigate, run JavaScript, wait for a condition."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self._ids = itertools.count(1)
        # Real mouse clicks made through `click`: a flow's click count (issue 17's closing note).
        self.clicks = 0

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") != call_id:
                continue  # an event
            if "error" in message:
                raise BrowserError(f"{method}: {message['error']}")
            return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll until the expression is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # e.g. the page is between two documents
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for: {expression}")
            time.sleep(0.1)

    def wait_for_load(self, timeout: float = 30.0) -> None:
        self.wait_for("document.readyState === 'complete'", timeout)

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (a user gesture), counted."""
        box = self.evaluate(
            f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}});
            const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];
            }})()"""
        )
        if box is None:
            raise BrowserError(f"nothing to click at {selector}")
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )
        self.clicks += 1

    def click_away(self, selector: str) -> None:
        """Click something that loads another page, and wait for it."""
        self.evaluate("window.__leaving = true")
        self.click(selector)
        self.wait_for("window.__leaving === undefined && document.readyState === 'complete'")

    def type_text(self, selector: str, text: str) -> None:
        """Focus the field and type as a keyboard would (no click counted: typing is not one)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def viewport(self, width: int, height: int = 844) -> None:
        """A phone-sized window (390 px is a common phone width) with touch-style metrics."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 768,
        )

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def snap(self, name: str) -> None:
        """Keep a screenshot of a page for the closing note when BROWSER_SNAPSHOTS=1."""
        if os.environ.get("BROWSER_SNAPSHOTS") == "1":
            self.screenshot(SCREENSHOTS / "pages" / f"{name}.png")


# Where failed browser tests leave their last screen (var/ is not tracked by git).
SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"


def sign_in(page: Page, base_url: str, user: Any, language: str) -> None:
    """Sign `user` in through a session cookie and pick the admin's language."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    for name, value in [
        (settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value),
        (settings.LANGUAGE_COOKIE_NAME, language),
    ]:
        page.send("Network.setCookie", name=name, value=value, url=base_url)


def browser_tab(request: pytest.FixtureRequest) -> Iterator[Page]:
    """For a `page` fixture: a headless chromium tab, and a test that fails leaves a
    screenshot of it in var/screenshots."""
    failed_before = request.session.testsfailed
    for page in browser_page():
        yield page
        # The call's report is logged (and counted) before fixtures are torn down.
        if request.session.testsfailed > failed_before:
            name = re.sub(r"[^\w.-]+", "_", request.node.nodeid)
            try:
                path = page.screenshot(SCREENSHOTS / f"{name}.png")
                print(f"screenshot of the failure: {path}")
            except Exception as exc:  # the browser may be what failed
                print(f"no screenshot: {exc}")


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the browser tests need Debian's chromium: apt-get install chromium")
    return path


def browser_page() -> Iterator[Page]:
    """A fresh headless chromium with one blank tab, closed afterwards."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    process = subprocess.Popen(
        [
            chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the teardown stops every helper
    )  # fmt: skip
    try:
        port = _devtools_port(process, Path(profile))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        with connect(page_url, max_size=None, open_timeout=20) as socket:
            page = Page(socket)
            page.send("Page.enable")
            yield page
    finally:
        _chromium_stop(process)
        _profile_remove(profile)


def _chromium_stop(process: subprocess.Popen[bytes]) -> None:
    """Stop chromium and its helper processes, which can outlive the browser process and
    keep writing into the profile while it is being removed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _profile_remove(profile: str) -> None:
    """Remove the profile; a helper still exiting may add a file once more, so try again."""
    for _attempt in range(20):
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.25)
    shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(process: subprocess.Popen[bytes], profile: Path) -> int:
    """Chromium writes the port it took into the profile once it listens."""
    announced = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BrowserError("chromium exited before it listened")
        lines = announced.read_text().splitlines() if announced.exists() else []
        if lines and lines[0].isdigit():
            return int(lines[0])
        time.sleep(0.1)
    raise BrowserError("chromium did not open its DevTools port in 30 s")

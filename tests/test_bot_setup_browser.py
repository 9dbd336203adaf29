"""Bot setup in a real headless chromium, in 简体中文: from the add page to the callback URL
on the clipboard, with the preview following the slug and generated credentials."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from apps.bots.models import Bot
from tests.browser import Page, browser_tab
from wecom.crypto import validate_encoding_aes_key

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    yield from browser_tab(request)  # a screenshot in var/screenshots when the test fails


def click(page: Page, selector: str) -> None:
    """A real mouse click (a user gesture, which the clipboard asks for)."""
    box = page.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
        " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
        " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    for kind in ("mousePressed", "mouseReleased"):
        page.send(
            "Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1
        )


def test_create_a_bot_from_the_add_page_to_the_copied_callback_url(
    live_server, page, model_profile
):
    admin = User.objects.create_superuser("admin", "admin@example.com", "x-Very-Long-Pass-1")
    client = Client()
    client.force_login(admin)
    for name, value in [
        (settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value),
        (settings.LANGUAGE_COOKIE_NAME, "zh-hans"),
    ]:
        page.send("Network.setCookie", name=name, value=value, url=live_server.url)
    page.send(
        "Browser.grantPermissions",
        origin=live_server.url,
        permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
    )
    page.goto(live_server.url + reverse("admin:bots_bot_add"))
    assert page.evaluate("document.documentElement.lang") == "zh-hans"
    assert "企业微信 AI" in page.evaluate("document.title")

    # The callback URL follows the slug as it is typed
    page.evaluate(
        "(() => { const n = document.getElementById('id_name'); n.value = 'IT助手';"
        " n.dispatchEvent(new Event('input', {bubbles: true}));"
        " const s = document.getElementById('id_slug'); s.value = 'it-desk';"
        " s.dispatchEvent(new Event('input', {bubbles: true}));"
        " s.dispatchEvent(new Event('change', {bubbles: true})); return true; })()"
    )
    expected = settings.PUBLIC_BASE_URL + "/wecom/aibot/it-desk/callback"
    assert page.wait_for("document.getElementById('callback-url').textContent") == expected
    # Callback mode marks Token and EncodingAESKey required and shows its console steps
    assert page.evaluate(
        "document.querySelector('label[for=id_new_token]').classList.contains('required')"
    )
    assert page.evaluate("document.querySelector('[data-steps-mode=long_connection]').hidden")

    # Generated credentials are filled in, and shown so they can be typed into WeCom
    click(page, "[data-generate-for=id_new_token]")
    click(page, "[data-generate-for=id_new_encoding_aes_key]")
    token = page.wait_for("document.getElementById('id_new_token').value")
    key = page.wait_for("document.getElementById('id_new_encoding_aes_key').value")
    assert len(token) == 32 and token.isalnum()
    validate_encoding_aes_key(key)
    assert page.evaluate("document.getElementById('id_new_token').type") == "text"

    # The long connection asks for other fields
    page.evaluate(
        "(() => { const m = document.getElementById('id_connection_mode');"
        " m.value = 'long_connection'; m.dispatchEvent(new Event('change')); return true; })()"
    )
    assert page.evaluate(
        "document.querySelector('label[for=id_aibotid]').classList.contains('required')"
        " && !document.querySelector('label[for=id_new_token]').classList.contains('required')"
    )
    page.evaluate(
        "(() => { const m = document.getElementById('id_connection_mode');"
        " m.value = 'callback'; m.dispatchEvent(new Event('change')); return true; })()"
    )

    # When the model is chosen and the form saved
    page.evaluate(
        f"(() => {{ const s = document.getElementById('id_model_profile');"
        f" s.appendChild(new Option('m', '{model_profile.pk}', true, true)); return true; }})()"
    )
    page.evaluate("window.__leaving = true")
    click(page, "input[name=_save]")
    page.wait_for("window.__leaving === undefined && document.readyState === 'complete'")

    # Then the bot's page opens with its callback URL in the message and a copy button
    bot = Bot.objects.get(name="IT助手")
    assert bot.slug == "it-desk"
    assert (bot.token, bot.encoding_aes_key) == (token, key)
    assert page.evaluate("location.pathname") == reverse("admin:bots_bot_change", args=[bot.pk])
    message = page.evaluate("document.querySelector('.messagelist').textContent")
    assert expected in message and "企业微信" in message
    click(page, "[data-copy-target=callback-url]")
    assert page.wait_for(
        "document.querySelector('[data-copy-target=callback-url]').textContent === '已复制'"
    )
    assert page.evaluate("navigator.clipboard.readText()") == expected

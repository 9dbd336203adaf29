"""A/B variants in the browser (issue 15, item 4): an admin adds a variant on the bot's page,
opens the comparison from the bot page and promotes the variant, in 简体中文."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from apps.audit.models import OperatorAuditEntry
from apps.bots.models import Bot
from apps.bots.variants import BotVariant
from tests.browser import Page, browser_tab, sign_in

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    yield from browser_tab(request)


def test_add_a_variant_compare_it_and_promote_it(live_server, page, bot):
    admin = User.objects.create_superuser("admin", "admin@example.com", "x-Very-Long-Pass-1")
    sign_in(page, live_server.url, admin, "zh-hans")
    page.goto(live_server.url + reverse("admin:bots_bot_change", args=[bot.pk]))
    # The inline's "add another" row, then the new variant's fields
    page.wait_for("!!document.querySelector('#variants-group .add-row a')")
    page.evaluate("document.querySelector('#variants-group .add-row a').click()")
    page.wait_for("!!document.getElementById('id_variants-0-name')")
    page.type_text("#id_variants-0-name", "简洁版")
    page.evaluate("document.getElementById('id_variants-0-weight').value = '30'")
    page.type_text("#id_variants-0-system_prompt", "Answer in one sentence.")
    page.click_away("input[name=_continue]")
    assert page.evaluate("!!document.querySelector('.messagelist .success')"), page.evaluate(
        "document.getElementById('content-main').innerText.slice(0, 2000)"
    )
    variant = BotVariant.objects.get(bot=bot)
    assert (variant.name, variant.weight, len(variant.buckets)) == ("简洁版", 30, 30)

    page.click_away("#variants-link")
    assert "对照组" in page.evaluate("document.getElementById('variants-comparison').textContent")
    assert page.evaluate(f"!!document.querySelector('tr[data-variant=\"{variant.pk}\"]')")
    page.snap("bot-variants")
    page.evaluate("window.confirm = () => true")
    page.click_away(f'tr[data-variant="{variant.pk}"] .variant-promote button')
    assert "简洁版" in page.evaluate("document.querySelector('.messagelist').textContent")
    bot = Bot.objects.get(pk=bot.pk)
    assert bot.system_prompt == "Answer in one sentence."
    assert not BotVariant.objects.get(pk=variant.pk).enabled
    assert OperatorAuditEntry.objects.filter(action="bots.variant.promote").count() == 1

"""Delivery health per bot: WeCom's URL verification, the last question and answer, and
the day's stream expiries, response_url failures and failed turns, on the list and page."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.cache import cache
from django.utils import timezone

from apps.bots.models import Bot, Conversation, Turn
from apps.bots.selectors import bots_delivery_health

pytestmark = pytest.mark.django_db(transaction=True)


def _turn(bot, number: int, **fields) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(bot=bot, chat_type="single", userid="u")
    values = {
        "bot": bot, "conversation": conversation, "msgid": f"m-{number}",
        "stream_id": f"s-{number}", "question": "q", "received_at": timezone.now(),
    }  # fmt: skip
    return Turn.objects.create(**(values | fields))


def test_wecom_verifying_the_url_is_recorded(bot, simulator_for):
    assert Bot.objects.get(pk=bot.pk).url_verified_at is None
    simulator_for(bot).verify_url()
    assert Bot.objects.get(pk=bot.pk).url_verified_at is not None


def test_a_failed_verification_is_not_recorded(live_server, bot, client):
    response = client.get(
        bot.callback_path(),
        {"msg_signature": "0" * 40, "timestamp": "1", "nonce": "2", "echostr": "x"},
    )
    assert response.status_code == 403
    assert Bot.objects.get(pk=bot.pk).url_verified_at is None


def test_the_days_delivery_is_counted_per_bot(make_bot):
    hr, it = make_bot(), make_bot(slug="it", name="IT")
    now = timezone.now()
    _turn(hr, 1, status=Turn.Status.ANSWERED, finished_at=now)
    _turn(hr, 2, status=Turn.Status.ANSWERED, finished_at=now, response_url_used_at=now)
    _turn(hr, 3, status=Turn.Status.ANSWERED, finished_at=now,
          error="response_url delivery failed: HTTP 502")  # fmt: skip
    _turn(hr, 4, status=Turn.Status.FAILED, finished_at=now)
    _turn(hr, 5, status=Turn.Status.FAILED, received_at=now - dt.timedelta(days=2))  # too old
    cache.delete("bots:delivery-health")

    health = bots_delivery_health()

    assert set(health) == {hr.pk}  # it had no turns today
    assert (health[hr.pk].stream_expiries, health[hr.pk].response_url_failures) == (1, 1)
    assert health[hr.pk].failed == 1
    assert health[hr.pk].last_answer_at == now
    assert it.pk not in health
    assert bots_delivery_health() == health  # the second read comes from the cache


def test_the_bot_list_and_page_show_it(admin_client, bot):
    now = timezone.now()
    _turn(bot, 1, status=Turn.Status.FAILED, finished_at=now)
    cache.delete("bots:delivery-health")
    listing = admin_client.get("/admin/bots/bot/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "delivery-problem" in listing and "1 failed" in listing
    page = admin_client.get(f"/admin/bots/bot/{bot.pk}/change/", HTTP_ACCEPT_LANGUAGE="en")
    text = page.content.decode()
    assert "callback URL verified by WeCom" in text and "never" in text
    assert "turns that failed (24 h)</th><td>1<" in text

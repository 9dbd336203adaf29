"""Issue 9, throttling: password guessing locks the account and the address, the API has a
budget per account and per address, and every refusal is recorded and logged.
"""

from __future__ import annotations

import logging

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.throttling import SimpleRateThrottle

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture
def staff_user() -> User:
    return User.objects.create_user("officer", password=PASSWORD, is_staff=True)


def _login(client, username: str, password: str, address: str = "198.51.100.7"):
    return client.post(
        reverse("admin:login"),
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    )


def test_guessing_one_accounts_password_locks_that_account(client, staff_user, caplog):
    from axes.models import AccessAttempt

    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, "officer", "wrong").status_code == 200  # the form again
    assert _login(client, "officer", "wrong").status_code == 429  # the last one allowed
    with caplog.at_level(logging.WARNING):
        # The right password no longer helps, and neither does another address.
        locked = _login(client, "officer", PASSWORD, address="203.0.113.50")
    assert locked.status_code == 429
    assert "登录失败次数过多" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    assert AccessAttempt.objects.filter(username="officer").exists()
    assert any("locking out" in r.getMessage().lower() for r in caplog.records)


def test_guessing_from_one_address_locks_that_address(client, staff_user):
    for number in range(settings.AXES_FAILURE_LIMIT):
        _login(client, f"user{number}", "wrong", address="198.51.100.9")
    assert _login(client, "officer", PASSWORD, address="198.51.100.9").status_code == 429
    # The account itself was not guessed at: from elsewhere it signs in.
    assert _login(client, "officer", PASSWORD, address="198.51.100.10").status_code == 302


def test_a_good_login_is_not_slowed_down(client, staff_user):
    _login(client, "officer", "wrong")
    assert _login(client, "officer", PASSWORD).status_code == 302


@pytest.mark.parametrize(("scope", "per_address"), [("user", False), ("address", True)])
def test_api_is_throttled_per_account_and_per_address(
    client, staff_user, monkeypatch, caplog, scope, per_address
):
    rates = {"user": "1000/min", "address": "1000/min", "anon": "1000/min", scope: "3/min"}
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", rates)
    other = User.objects.create_user("second", password=PASSWORD, is_staff=True)
    tokens = [Token.objects.create(user=staff_user).key, Token.objects.create(user=other).key]
    url = reverse("knowledge:search")

    def call(token: str, address: str):
        return client.get(url, {"q": "年假"}, HTTP_AUTHORIZATION=f"Token {token}",
                          REMOTE_ADDR=address, HTTP_ACCEPT_LANGUAGE="en")  # fmt: skip

    for _ in range(3):
        assert call(tokens[0], "198.51.100.20").status_code != 429
    with caplog.at_level(logging.WARNING):
        refused = call(tokens[0], "198.51.100.20")
    assert refused.status_code == 429
    assert "throttled" in refused.json()["detail"]
    assert "API throttled" in caplog.text
    # Another account from the same address shares the address budget, not the account one.
    assert (call(tokens[1], "198.51.100.20").status_code == 429) is per_address
    # The same account from another address shares the account budget, not the address one.
    assert (call(tokens[0], "198.51.100.21").status_code == 429) is not per_address

"""Issue 9, item 1: the WebSocket feeds keep the admin's boundary.

`/ws/turns/<id>/` answers only turns of the officer's assigned bots, only after the turn's
page asked for a reason, and logs the subscription; `/ws/audit/flagged/` needs the case
list's permission and stops when the assignment is withdrawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

import pytest
import websockets
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from websockets.exceptions import ConnectionClosed, InvalidStatus

from apps.audit.models import AccessLog, Action, AuditPolicy, PolicyWordList, SensitiveWordList
from apps.audit.services.policy import policy_evaluate
from apps.audit.services.review import review_cases_open_for_turn, review_scope_set
from apps.bots.models import Conversation, Turn
from apps.bots.streams import stream_publish
from tests.access_reason import REASON, open_with_reason

pytestmark = pytest.mark.django_db(transaction=True)


def generating_turn(bot) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(
        bot=bot, chat_type="single", userid="wangwu"
    )
    return Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=f"m-{bot.slug}-{time.time_ns()}",
        stream_id=f"s-{bot.slug}-{time.time_ns()}",
        question=f"{bot.slug}的问题",
        status=Turn.Status.GENERATING,
        received_at=timezone.now(),
    )


def officer_with(username: str, *codenames: str) -> tuple[User, Client]:
    officer = User.objects.create_user(username, password="x", is_staff=True)
    officer.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(officer)
    return officer, client


def _headers(base: str, client: Client) -> dict[str, str]:
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return {"Origin": f"http://{base}", "Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"}


async def _watch_turn(base: str, client: Client, turn_id: int) -> dict:
    async with websockets.connect(
        f"ws://{base}/ws/turns/{turn_id}/", additional_headers=_headers(base, client)
    ) as socket_:
        await asyncio.sleep(0.3)  # the consumer joins the group right after the handshake
        await asyncio.to_thread(
            stream_publish, turn_id, content="年假五天", finish=True, status="answered"
        )
        return json.loads(await asyncio.wait_for(socket_.recv(), timeout=10))


def _refused(call: Callable[[], object]) -> bool:
    with pytest.raises(InvalidStatus) as excinfo:
        call()
    return excinfo.value.response.status_code == 403


def test_officer_cannot_follow_turns_of_a_bot_not_assigned_to_them(
    asgi_server, make_bot, admin_user
):
    # Given an officer with the global view_turn permission, assigned to the HR bot only
    hr, it = make_bot(), make_bot(name="IT助手", slug="it")
    turn_hr, turn_it = generating_turn(hr), generating_turn(it)
    officer, client = officer_with("officer_a", "view_turn")
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    # When they subscribe to the IT bot's turn (ids are sequential) they are refused,
    # whether or not they gave a reason for their own turn
    assert _refused(lambda: asyncio.run(_watch_turn(asgi_server, client, turn_it.pk)))
    open_with_reason(client, reverse("admin:bots_turn_change", args=[turn_hr.pk]))
    assert _refused(lambda: asyncio.run(_watch_turn(asgi_server, client, turn_it.pk)))
    # Then nothing about the IT turn is in the access log
    assert not AccessLog.objects.filter(object_id=str(turn_it.pk)).exists()


def test_live_turn_needs_the_reason_given_on_its_page_and_is_logged(
    asgi_server, make_bot, admin_user
):
    hr = make_bot()
    turn = generating_turn(hr)
    officer, client = officer_with("officer_a", "view_turn")
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    # Without having said why on the turn's page, the live feed is refused
    assert _refused(lambda: asyncio.run(_watch_turn(asgi_server, client, turn.pk)))
    assert not AccessLog.objects.exists()
    # After the page asked (and logged), the feed streams and the subscription is logged
    page = open_with_reason(client, reverse("admin:bots_turn_change", args=[turn.pk]))
    assert 'id="turn-live"' in page.content.decode()
    received = asyncio.run(_watch_turn(asgi_server, client, turn.pk))
    assert received == {"content": "年假五天", "finish": True, "status": "answered"}
    rows = list(AccessLog.objects.order_by("id").values_list("object_id", "username", "reason"))
    assert rows == [(str(turn.pk), "officer_a", REASON["reason"])] * 2


def test_live_turn_of_a_missing_turn_is_refused_even_for_superusers(asgi_server, admin_client):
    assert _refused(lambda: asyncio.run(_watch_turn(asgi_server, admin_client, 987654)))


# --- the flagged-items feed -----------------------------------------------------------------


def flag_turn(bot, answer: str) -> int:
    policy, _ = AuditPolicy.objects.get_or_create(name="答案检查")
    if not policy.word_list_rules.exists():
        words = SensitiveWordList.objects.create(name="内部", words="内部价格")
        PolicyWordList.objects.create(policy=policy, word_list=words, action=Action.FLAG)
    policy.bots.add(bot)
    turn = generating_turn(bot)
    decision = policy_evaluate(policies=[policy], text=answer)
    (case,) = review_cases_open_for_turn(turn=turn, decision=decision, policies=[policy])
    return case.pk


def _closing_connection(call: Callable[[], None]) -> None:
    """Run `call` in this thread and close its own database connection after."""
    try:
        call()
    finally:
        connection.close()


async def _watch_flagged(base: str, client: Client, flag: Callable[[], None]) -> list[dict]:
    received = []
    async with websockets.connect(
        f"ws://{base}/ws/audit/flagged/", additional_headers=_headers(base, client)
    ) as socket_:
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_closing_connection, flag)
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            received.append(json.loads(await asyncio.wait_for(socket_.recv(), timeout=3)))
    return received


def test_flagged_feed_needs_the_case_list_permission(asgi_server, make_bot, admin_user):
    hr = make_bot()
    officer, client = officer_with("officer_a")  # assigned, but may not list cases
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    assert _refused(lambda: asyncio.run(_watch_flagged(asgi_server, client, lambda: None)))


def test_flagged_feed_stops_when_the_assignment_is_withdrawn(asgi_server, make_bot, admin_user):
    hr = make_bot()
    officer, client = officer_with("officer_a", "view_reviewcase")
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)

    def withdraw_then_flag() -> None:
        review_scope_set(officer=officer, bots=[], sources=[], actor=admin_user)
        flag_turn(hr, "内部价格是一百元")

    assert asyncio.run(_watch_flagged(asgi_server, client, withdraw_then_flag)) == []
    # While assigned, the same officer does receive the notice
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    received = asyncio.run(
        _watch_flagged(asgi_server, client, lambda: flag_turn(hr, "内部价格是两百元"))
    )
    assert [notice["bot"] for notice in received] == [hr.pk]

"""Officers watch newly flagged items live over a WebSocket, scoped to their assignments."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
import websockets
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from apps.audit.models import Action, AuditPolicy, PolicyWordList, SensitiveWordList
from apps.audit.services.policy import policy_evaluate
from apps.audit.services.review import review_cases_open_for_turn, review_scope_set
from apps.bots.models import Conversation, Turn

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def flag_turn(bot, answer: str) -> int:
    """Open a review case for a flagged answer of `bot` (committed: autocommit test)."""
    policy, _ = AuditPolicy.objects.get_or_create(name="答案检查")
    if not policy.word_list_rules.exists():
        words = SensitiveWordList.objects.create(name="内部", words="内部价格")
        PolicyWordList.objects.create(policy=policy, word_list=words, action=Action.FLAG)
    policy.bots.add(bot)
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="wangwu")
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=f"m-{bot.slug}-{time.time_ns()}",
        stream_id=f"s-{bot.slug}-{time.time_ns()}",
        question="报价多少？",
        answer=answer,
        status=Turn.Status.ANSWERED,
        received_at=timezone.now(),
    )
    decision = policy_evaluate(policies=[policy], text=answer)
    (case,) = review_cases_open_for_turn(turn=turn, decision=decision, policies=[policy])
    return case.pk


async def _watch(base: str, cookie: str | None, flag: Callable[[], None]) -> list[dict]:
    headers = {"Origin": f"http://{base}"}
    if cookie:
        headers["Cookie"] = f"{settings.SESSION_COOKIE_NAME}={cookie}"
    received = []
    async with websockets.connect(
        f"ws://{base}/ws/audit/flagged/", additional_headers=headers, open_timeout=10
    ) as socket_:
        await asyncio.sleep(0.3)  # the consumer joins its groups right after the handshake
        await asyncio.to_thread(flag)
        received.append(json.loads(await asyncio.wait_for(socket_.recv(), timeout=10)))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(socket_.recv(), timeout=1)
    return received


def test_officer_receives_only_cases_of_assigned_bots(asgi_server, make_bot, admin_user):
    hr, it = make_bot(), make_bot(name="IT助手", slug="it")
    officer = User.objects.create_user("officer_a", password="x", is_staff=True)
    officer.user_permissions.add(Permission.objects.get(codename="view_reviewcase"))
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    opened: dict[str, int] = {}

    def flag_both() -> None:
        opened["it"] = flag_turn(it, "内部价格是两百元")
        opened["hr"] = flag_turn(hr, "内部价格是一百元")

    received = asyncio.run(_watch(asgi_server, session_cookie(officer), flag_both))
    (summary,) = received
    assert summary["case"] == opened["hr"] and summary["bot"] == hr.pk
    assert summary["source"].startswith("bots.turn:") and summary["action"] == Action.FLAG
    assert summary["policy_name"] == "答案检查" and summary["created_at"]
    assert "内部价格" not in json.dumps(summary, ensure_ascii=False)


def test_staff_without_review_scope_and_anonymous_are_refused(asgi_server, make_bot):
    make_bot()
    idle = User.objects.create_user("idle", password="x", is_staff=True)
    for cookie in (session_cookie(idle), None):
        with pytest.raises(websockets.exceptions.InvalidStatus) as excinfo:
            asyncio.run(_watch(asgi_server, cookie, lambda: None))
        assert excinfo.value.response.status_code == 403


@pytest.mark.parametrize(
    ("language", "text"),
    [
        ("en", "New flagged items since this page was opened"),
        ("zh-hans", "打开此页面后新增的待审核内容"),
    ],
)
def test_review_case_list_listens_to_the_feed(admin_client, language, text):
    page = admin_client.get(
        "/admin/audit/reviewcase/", HTTP_ACCEPT_LANGUAGE=language
    ).content.decode()

    assert 'data-url="/ws/audit/flagged/"' in page
    assert "audit/flagged_live.js" in page
    assert text in page
    # The script fills the count into the translated sentence.
    assert text + ("：%(count)s" if language == "zh-hans" else ": %(count)s") in page

"""The test chat on a bot's page (issue 17, item 2): asked as a directory user or an external
user through the turn pipeline, marked as a test, for those who may change the bot only."""

from __future__ import annotations

import io
import time

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from apps.audit.models import (
    Action,
    AuditPolicy,
    OperatorAuditEntry,
    PolicyWordList,
    ReviewCase,
    SensitiveWordList,
)
from apps.bots.models import Conversation, Turn
from apps.bots.ratelimit import rate_limit_exceeded
from apps.bots.services.trial import EXTERNAL_USERID, TRIAL_CHAT_PREFIX
from apps.directory.models import DirectoryUser
from apps.knowledge.models import KnowledgeBase

pytestmark = pytest.mark.django_db


def staff_client(username: str, *codenames: str) -> Client:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="bots", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


def ask(client: Client, bot, **data: str):
    return client.post(reverse("admin:bots_bot_test_chat", args=[bot.pk]), data)


@pytest.fixture
def hr(make_bot):
    DirectoryUser.objects.create(userid="zhangsan", name="张三", departments=["HR"])
    DirectoryUser.objects.create(userid="lisi", name="李四", departments=["Sales"])
    return make_bot(allowed_userids=["zhangsan"])


def policy_on(bot, word: str, action: str) -> AuditPolicy:
    policy = AuditPolicy.objects.create(name=f"{action}策略", refusal_message="此问题无法回答。")
    words = SensitiveWordList.objects.create(name=f"{action}词", words=word)
    PolicyWordList.objects.create(policy=policy, word_list=words, action=action)
    policy.bots.add(bot)
    return policy


def test_only_users_who_may_change_the_bot_get_the_test_chat(hr, admin_client) -> None:
    page_url = reverse("admin:bots_bot_change", args=[hr.pk])
    # Anonymous: the sign-in page, nothing asked
    anonymous = ask(Client(), hr, userid="zhangsan", question="年假几天")
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    # Staff who may only view the bot: no test chat on the page, the endpoint refuses
    viewer = staff_client("viewer", "view_bot")
    assert 'id="test-chat"' not in viewer.get(page_url).content.decode()
    assert ask(viewer, hr, userid="zhangsan", question="年假几天").status_code == 404
    assert not Turn.objects.exists()
    # Staff who may change it: the test chat, with directory users as suggestions
    editor = staff_client("editor", "view_bot", "change_bot")
    page = editor.get(page_url).content.decode()
    assert 'id="test-chat"' in page and '<option value="zhangsan">张三</option>' in page
    assert ask(editor, hr, userid="zhangsan", question="年假几天").status_code == 200
    # The admin too
    assert ask(admin_client, hr, userid="zhangsan", question="病假几天").status_code == 200
    assert Turn.objects.filter(is_test=True).count() == 2


def test_the_asker_must_be_in_the_directory_unless_external(hr, admin_client) -> None:
    refused = ask(admin_client, hr, userid="nobody", question="年假几天")
    assert refused.status_code == 400 and "userid" in refused.json()["errors"]
    assert ask(admin_client, hr, userid="", question="年假几天").status_code == 400
    assert not Turn.objects.exists()
    # An external user needs no directory entry, and the allow-list refuses them as in WeCom
    external = ask(admin_client, hr, external="1", question="年假几天")
    assert external.status_code == 200
    state = external.json()
    assert (state["status"], state["finished"], state["rejection_reason"]) == (
        Turn.Status.REJECTED,
        True,
        "not_allowed",
    )
    assert Turn.objects.get().conversation.userid == EXTERNAL_USERID


def test_a_test_question_goes_through_admission_and_policies(hr, admin_client) -> None:
    policy_on(hr, "内部价格", Action.BLOCK)
    # The employee's real chat, which the test must not join
    real = Conversation.objects.create(bot=hr, chat_type="single", userid="zhangsan")

    state = ask(admin_client, hr, userid="zhangsan", question="内部价格是多少").json()

    turn = Turn.objects.get(pk=state["turn"])
    assert turn.is_test and turn.status == Turn.Status.REJECTED
    assert turn.rejection_reason == "policy_blocked" and turn.answer == "此问题无法回答。"
    assert turn.conversation != real and turn.conversation.chat_id.startswith(TRIAL_CHAT_PREFIX)
    # The page's JSON: the refusal, the policy decision in words, no raw match offsets
    assert state["content"] == "此问题无法回答。" and state["finished"]
    assert state["decisions"] == [
        {
            "subject": "question",
            "policy": "block策略",
            "label": "block词",
            "word": "内部价格",
            "action": str(Action.BLOCK.label),
        }
    ]
    # The admin's act is audited, the question itself stays on the turn
    entry = OperatorAuditEntry.objects.get(action="bots.test_chat.ask")
    assert entry.object_id == str(turn.pk) and "内部价格" not in str(entry.after)


def test_test_questions_are_rate_limited_apart_from_the_employee(hr, admin_client) -> None:
    hr.rate_limit_per_minute = 2
    hr.save()
    reasons = [
        ask(admin_client, hr, userid="zhangsan", question=f"问题{n}").json()["rejection_reason"]
        for n in range(3)
    ]
    assert reasons == ["", "", "rate_limited"]
    # The employee's own bucket is untouched: their next two questions pass
    scope = f"bot:{hr.pk}:user:zhangsan"
    assert not rate_limit_exceeded(scope=scope, limit=2)
    assert not rate_limit_exceeded(scope=scope, limit=2)
    assert rate_limit_exceeded(scope=scope, limit=2)


def test_an_admitted_test_turn_is_polled_by_its_own_session_only(hr, admin_client) -> None:
    state = ask(admin_client, hr, userid="zhangsan", question="年假几天").json()
    assert (state["status"], state["finished"]) == (Turn.Status.QUEUED, False)
    mine = admin_client.get(state["poll"])
    assert mine.status_code == 200 and mine.json()["id"] == state["turn"]
    User.objects.create_superuser("admin2", "a2@example.com", "x")
    other = Client()
    other.force_login(User.objects.get(username="admin2"))
    assert other.get(state["poll"]).status_code == 404
    # A real turn cannot be read through the test chat's endpoint
    real = Turn.objects.create(
        bot=hr,
        conversation=Conversation.objects.create(bot=hr, chat_type="single", userid="zhangsan"),
        msgid="real-1",
        stream_id="real-s1",
        question="真实问题",
        received_at=Turn.objects.get().received_at,
    )
    session = admin_client.session
    session["bots.test_chat_turns"] = [*session["bots.test_chat_turns"], real.pk]
    session.save()
    url = reverse("admin:bots_bot_test_chat_turn", args=[hr.pk, real.pk])
    assert admin_client.get(url).status_code == 404


def test_test_turns_are_flagged_in_the_turn_and_review_lists(hr, admin_client) -> None:
    policy_on(hr, "内部价格", Action.FLAG)
    ask(admin_client, hr, userid="zhangsan", question="内部价格是多少")
    case = ReviewCase.objects.get()
    assert case.turn.is_test
    cases = admin_client.get(reverse("admin:audit_reviewcase_changelist")).content.decode()
    assert "zhangsan (测试对话)" in cases
    real_only = admin_client.get(
        reverse("admin:audit_reviewcase_changelist") + "?turn__is_test__exact=0"
    ).content.decode()
    assert "zhangsan" not in real_only
    turns = admin_client.get(
        reverse("admin:bots_turn_changelist") + "?is_test__exact=0"
    ).content.decode()
    assert reverse("admin:bots_turn_change", args=[case.turn_id]) not in turns


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_answer_streams_in_with_sources_scores_and_timings(
    make_bot, start_worker, tmp_path
) -> None:
    (tmp_path / "handbook.md").write_text(
        "# 员工手册\n\n## 年假\n\n员工入职满一年后，每年享有五天带薪年假。\n", encoding="utf-8"
    )
    call_command("kb_ingest", "handbook", str(tmp_path / "handbook.md"), stdout=io.StringIO())
    DirectoryUser.objects.create(userid="zhangsan", name="张三", departments=["HR"])
    bot = make_bot(max_tokens=40, retrieval_top_k=2)
    bot.knowledge_bases.set(KnowledgeBase.objects.all())
    admin = User.objects.create_superuser("admin", "admin@example.com", "x")
    client = Client()
    client.force_login(admin)
    start_worker()

    state = ask(client, bot, userid="zhangsan", question="入职一年有几天年假").json()
    poll = state["poll"]
    deadline = time.monotonic() + 180
    while not state["finished"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
        state = client.get(poll).json()
    assert state["status"] == Turn.Status.ANSWERED, state
    assert state["content"]
    assert state["sources"] and state["sources"][0]["title"] == "员工手册"
    assert isinstance(state["sources"][0]["score"], float)
    assert state["timings"]["total"] > 0 and state["timings"]["first_token"] is not None
    assert Turn.objects.get(pk=state["id"]).is_test

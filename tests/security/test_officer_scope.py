"""Issue 9, item 4 and its lower items: scope is granted in one audited place, and every
page that shows a scoped record asks why (POST with CSRF) and logs what it shows.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.audit.models import (
    AccessLog,
    Action,
    ArchiveQuarantine,
    ArchiveSource,
    AuditPolicy,
    OperatorAuditEntry,
    PolicyWordList,
    ReviewCase,
    SensitiveWordList,
)
from apps.audit.services.review import review_scope_set
from apps.bots.models import Conversation, Turn
from tests.access_reason import REASON, open_with_reason
from tests.test_admin import _bot_form
from tests.test_audit_review import flagged_turn

pytestmark = pytest.mark.django_db


def make_turn(bot, question: str, answer: str, conversation: Conversation | None = None) -> Turn:
    conversation = conversation or Conversation.objects.create(
        bot=bot, chat_type="single", userid="wangwu"
    )
    return Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=f"m-{bot.slug}-{question}",
        stream_id=f"s-{bot.slug}-{question}",
        question=question,
        answer=answer,
        status=Turn.Status.ANSWERED,
        received_at=timezone.now(),
    )


def staff_with(username: str, *perms: str) -> tuple[User, Client]:
    """A non-superuser staff account holding `perms` ("app.codename") globally."""
    user = User.objects.create_user(username, password="x", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    client = Client()
    client.force_login(user)
    return user, client


def source(name: str, corp_id: str) -> ArchiveSource:
    return ArchiveSource.objects.create(name=name, corp_id=corp_id, secret="s")


def fresh(user: User) -> User:
    return User.objects.get(pk=user.pk)  # permission caches live on the instance


# --- item 4: review scope is granted on the assignment page only ---------------------------


def test_archive_source_admin_has_no_object_permission_pages() -> None:
    # Given a configuration admin who may change archive sources, but not assign officers
    hq = source("总部", "ww1")
    editor, client = staff_with("editor", "audit.view_archivesource", "audit.change_archivesource")
    # Then guardian's object-permission pages are not there to grant scope with
    with pytest.raises(NoReverseMatch):
        reverse("admin:audit_archivesource_permissions", args=[hq.pk])
    base = reverse("admin:audit_archivesource_change", args=[hq.pk]).removesuffix("change/")
    client.post(
        f"{base}permissions/user-manage/{editor.pk}/",
        {"permissions": ["review_archivesource", "change_archivesource"]},
    )
    assert not fresh(editor).has_perm("audit.review_archivesource", hq)
    page = client.get(reverse("admin:audit_archivesource_change", args=[hq.pk]))
    assert page.status_code == 200 and "permissions/" not in page.content.decode()


def _user_form(user: User, **fields) -> dict:
    return {
        "username": user.username,
        "is_active": "on",
        "is_staff": "on",
        "date_joined_0": "2026-11-01",
        "date_joined_1": "00:00:00",
        "initial-date_joined_0": "2026-11-01",
        "initial-date_joined_1": "00:00:00",
        **fields,
    }


def test_user_admin_cannot_grant_review_scope_not_even_to_oneself() -> None:
    # Given a user manager (change_user) who is not an officer assigner
    manager, client = staff_with("manager", "auth.view_user", "auth.change_user")
    review_all = Permission.objects.get(codename="review_archivesource")
    reviewers = Group.objects.create(name="全体审核")
    reviewers.permissions.add(review_all)
    url = reverse("admin:auth_user_change", args=[manager.pk])
    # When they grant themselves the global review permission, a group carrying it, or
    # superuser status
    for attempt in (
        {"user_permissions": [review_all.pk]},
        {"groups": [reviewers.pk]},
        {"is_superuser": "on"},
    ):
        client.post(url, _user_form(manager, **attempt))
        # Then none of it takes: scope is granted on the assignment page only
        manager = fresh(manager)
        assert not manager.has_perm("audit.review_archivesource")
        assert not manager.is_superuser and not manager.groups.exists()
    # And the group page does not offer the scope permission either
    group_url = reverse("admin:auth_group_change", args=[reviewers.pk])
    assert f'value="{review_all.pk}"' not in Client().get(group_url).content.decode()


def test_user_managers_cannot_take_over_a_superuser_account(admin_user) -> None:
    _, client = staff_with("manager", "auth.view_user", "auth.change_user")
    response = client.post(
        reverse("admin:auth_user_password_change", args=[admin_user.pk]),
        {"password1": "N3w-Pass-67890!", "password2": "N3w-Pass-67890!", "usable_password": "true"},
    )
    assert response.status_code == 403
    assert fresh(admin_user).check_password("password")


def test_saving_a_user_keeps_the_scope_they_already_hold(admin_client) -> None:
    officer = User.objects.create_user("officer", password="x", is_staff=True)
    reviewers = Group.objects.create(name="全体审核")
    reviewers.permissions.add(Permission.objects.get(codename="review_archivesource"))
    officer.groups.add(reviewers)
    response = admin_client.post(
        reverse("admin:auth_user_change", args=[officer.pk]),
        _user_form(officer, first_name="Wu"),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert list(fresh(officer).groups.all()) == [reviewers]


def test_permission_grants_are_recorded_by_name(admin_client) -> None:
    officer = User.objects.create_user("officer", password="x", is_staff=True)
    view_turn = Permission.objects.get(codename="view_turn")
    response = admin_client.post(
        reverse("admin:auth_user_change", args=[officer.pk]),
        _user_form(officer, user_permissions=[view_turn.pk]),
    )
    assert response.status_code == 302
    entry = OperatorAuditEntry.objects.get(action="auth.user.update")
    assert entry.before["permission_names"] == []
    assert entry.after["permission_names"] == ["bots.view_turn"]


# --- reasons: asked on every page that shows the record, by POST only --------------------


@pytest.fixture
def assigned(make_bot, admin_user):
    """An officer with view_turn/view_conversation, assigned to the HR bot (two turns)."""
    hr = make_bot()
    first = make_turn(hr, "年假几天", "年假五天")
    second = make_turn(hr, "病假几天", "病假三天", conversation=first.conversation)
    officer, client = staff_with("officer_a", "bots.view_turn", "bots.view_conversation")
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    return client, first, second


def test_history_page_asks_why_and_logs_like_the_change_page(assigned) -> None:
    client, turn, _ = assigned
    url = reverse("admin:bots_turn_history", args=[turn.pk])
    ask = client.get(url)
    assert ask.status_code == 200 and "access-reason-form" in ask.content.decode()
    assert "年假几天" not in ask.content.decode() and not AccessLog.objects.exists()
    page = open_with_reason(client, url)
    assert page.status_code == 200 and "年假几天" in page.content.decode()
    (entry,) = AccessLog.objects.all()
    assert (entry.object_type, entry.object_id, entry.reason) == (
        "bots.turn",
        str(turn.pk),
        REASON["reason"],
    )


def test_reason_as_a_get_parameter_or_other_methods_open_nothing(assigned) -> None:
    client, turn, _ = assigned
    url = reverse("admin:bots_turn_change", args=[turn.pk])
    for response in (client.get(url, REASON), client.put(url), client.options(url)):
        body = response.content.decode()
        assert "年假五天" not in body
    assert not AccessLog.objects.exists()


def test_reason_form_is_a_csrf_protected_post(assigned) -> None:
    client, turn, _ = assigned
    url = reverse("admin:bots_turn_change", args=[turn.pk])
    form = client.get(url).content.decode()
    assert 'method="post"' in form and "csrfmiddlewaretoken" in form
    strict = Client(enforce_csrf_checks=True)
    strict.cookies = client.cookies
    assert strict.post(url, {"_access_reason": "1", **REASON}).status_code == 403
    assert not AccessLog.objects.exists()


def test_one_reason_opens_the_page_once(assigned) -> None:
    client, turn, _ = assigned
    url = reverse("admin:bots_turn_change", args=[turn.pk])
    assert "年假五天" in open_with_reason(client, url).content.decode()
    again = client.get(url).content.decode()
    assert "access-reason-form" in again and "年假五天" not in again
    assert AccessLog.objects.count() == 1


def test_conversation_page_logs_every_turn_it_shows(assigned) -> None:
    client, first, second = assigned
    url = reverse("admin:bots_conversation_change", args=[first.conversation_id])
    page = open_with_reason(client, url).content.decode()
    assert "年假五天" in page and "病假三天" in page
    logged = set(AccessLog.objects.values_list("object_type", "object_id", "reason"))
    assert logged == {
        ("bots.conversation", str(first.conversation_id), REASON["reason"]),
        ("bots.turn", str(first.pk), REASON["reason"]),
        ("bots.turn", str(second.pk), REASON["reason"]),
    }


def test_a_decision_cannot_skip_opening_the_case(make_bot, admin_user) -> None:
    hr = make_bot()
    rules = AuditPolicy.objects.create(name="答案检查")
    words = SensitiveWordList.objects.create(name="内部", words="内部价格")
    PolicyWordList.objects.create(policy=rules, word_list=words, action=Action.FLAG)
    case = flagged_turn(hr, rules, "内部价格是一百元")
    officer, client = staff_with(
        "officer_a", "audit.view_reviewcase", "audit.change_reviewcase", "audit.decide_reviewcase"
    )
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    url = reverse("admin:audit_reviewcase_change", args=[case.pk])
    # A decision POSTed without the case's page having asked why is refused
    response = client.post(url, {"decision": ""})
    assert response.status_code == 403 and "内部价格" not in response.content.decode()
    assert ReviewCase.objects.get().status == ReviewCase.Status.OPEN


# --- secrets and passwords: recorded that (not how) they changed -------------------------


def test_rotating_a_bot_secret_is_recorded_with_a_fingerprint(admin_client, bot, model_profile):
    response = admin_client.post(
        reverse("admin:bots_bot_change", args=[bot.pk]),
        _bot_form(model_profile, slug=bot.slug, new_token="Rotated123"),
    )
    assert response.status_code == 302
    entry = OperatorAuditEntry.objects.get(action="bots.bot.update")
    before, after = entry.before["token_fingerprint"], entry.after["token_fingerprint"]
    assert before.startswith("hmac-sha256:") and after.startswith("hmac-sha256:")
    assert before != after and len(after) == len("hmac-sha256:") + 16
    assert "Rotated123" not in str(entry.before) + str(entry.after)


def test_a_password_set_in_the_admin_is_recorded(admin_client) -> None:
    officer = User.objects.create_user("officer", password="Old-Pass-12345", is_staff=True)
    response = admin_client.post(
        reverse("admin:auth_user_password_change", args=[officer.pk]),
        {"password1": "N3w-Pass-67890!", "password2": "N3w-Pass-67890!", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = OperatorAuditEntry.objects.get(action="auth.user.password_set")
    assert entry.actor_username == "admin" and entry.object_id == str(officer.pk)
    assert "N3w-Pass" not in str(entry.before) + str(entry.after)


# --- quarantine: scoped to the officer's archive sources ---------------------------------


def test_quarantined_records_are_scoped_to_assigned_sources() -> None:
    hq, branch = source("总部", "ww1"), source("分部", "ww2")
    mine = ArchiveQuarantine.objects.create(source=hq, seq=1, msgid="hq-1", error="bad key")
    other = ArchiveQuarantine.objects.create(source=branch, seq=1, msgid="br-1", error="bad key")
    officer, client = staff_with("officer_c", "audit.view_archivequarantine")
    assign_perm("audit.review_archivesource", officer, hq)
    listing = client.get(reverse("admin:audit_archivequarantine_changelist")).content.decode()
    assert "hq-1" in listing and "br-1" not in listing and "分部" not in listing
    assert (
        client.get(reverse("admin:audit_archivequarantine_change", args=[mine.pk])).status_code
        == 200
    )
    assert (
        client.get(reverse("admin:audit_archivequarantine_change", args=[other.pk])).status_code
        == 404
    )

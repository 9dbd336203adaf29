"""Issue 17, item 4: role presets seeded after migrate (apps/audit/roles.py), each able to do
its job and not more; given on the user page, with permission and role names translated."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse

from apps.audit.roles import role_presets_ensure
from apps.audit.services.review import review_scope_set
from tests.test_audit_review import flagged_turn, policy  # noqa: F401 - the policy fixture

pytestmark = pytest.mark.django_db

ROLES = ("IT admin", "Knowledge editor", "Compliance officer", "Auditor")


def member(role: str, username: str) -> tuple[User, Client]:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    client = Client()
    client.force_login(user)
    return user, client


def status(client: Client, name: str, *args) -> int:
    return client.get(reverse(f"admin:{name}", args=args)).status_code


def test_the_presets_exist_and_carry_no_review_scope_nor_the_assignment_right() -> None:
    for role in ROLES:
        group = Group.objects.get(name=role)
        codenames = set(group.permissions.values_list("codename", flat=True))
        assert codenames, role
        assert not codenames & {"review_bot", "review_archivesource", "assign_reviewcase"}


def test_a_missing_preset_comes_back_and_an_existing_one_keeps_the_admins_changes() -> None:
    # Given an admin who trimmed one preset, and a preset lost (a flush, a deletion)
    officer = Group.objects.get(name="Compliance officer")
    officer.permissions.remove(Permission.objects.get(codename="export_reviewcase"))
    Group.objects.filter(name="Auditor").delete()
    # When the presets are ensured again (after every migrate)
    assert role_presets_ensure() == ["Auditor"]
    # Then the lost one is back with its permissions, and the trimmed one is as the admin left it
    assert Group.objects.get(name="Auditor").permissions.filter(codename="view_ledgerentry")
    assert not officer.permissions.filter(codename="export_reviewcase").exists()
    assert role_presets_ensure() == []


def test_it_admin_configures_but_reads_no_content(bot) -> None:
    _, client = member("IT admin", "it")
    assert status(client, "bots_bot_add") == 200
    assert status(client, "bots_bot_change", bot.pk) == 200
    assert status(client, "inference_modelprofile_changelist") == 200
    assert status(client, "directory_directoryuser_add") == 200
    assert status(client, "audit_archivesource_add") == 200
    assert status(client, "audit_auditpolicy_add") == 200
    assert status(client, "auth_user_add") == 200
    for page in (
        "bots_turn_changelist",
        "bots_conversation_changelist",
        "audit_reviewcase_changelist",
        "audit_archivedmessage_changelist",
        "audit_accesslog_changelist",
        "audit_reviewcase_scope",
        "knowledge_document_changelist",
        "auth_group_add",
    ):
        assert status(client, page) == 403, page


def test_knowledge_editor_curates_knowledge_only(bot) -> None:
    _, client = member("Knowledge editor", "editor")
    assert status(client, "knowledge_knowledgebase_add") == 200
    assert status(client, "knowledge_document_changelist") == 200
    assert status(client, "knowledge_chunk_changelist") == 200
    assert status(client, "directory_directoryuser_changelist") == 200
    assert status(client, "directory_directoryuser_add") == 403
    for page in ("bots_bot_changelist", "bots_turn_changelist", "audit_reviewcase_changelist"):
        assert status(client, page) == 403, page


def test_compliance_officer_reviews_only_after_an_assignment(make_bot, policy, admin_user):  # noqa: F811
    from tests.access_reason import open_with_reason

    hr = make_bot()
    case = flagged_turn(hr, policy, "内部价格是一百元")
    officer, client = member("Compliance officer", "officer")
    url = reverse("admin:audit_reviewcase_change", args=[case.pk])
    assert open_with_reason(client, url).status_code == 404  # no scope yet
    review_scope_set(officer=officer, bots=[hr], sources=[], actor=admin_user)
    assert open_with_reason(client, url).status_code == 200
    assert client.post(url, {"decision": "confirmed", "note": "已处理"}).status_code == 302
    case.refresh_from_db()
    assert case.decision == "confirmed"
    for page in ("bots_bot_changelist", "audit_auditpolicy_changelist", "audit_reviewcase_scope"):
        assert status(client, page) == 403, page
    assert status(client, "audit_accesslog_changelist") == 403


def test_auditor_reads_the_trail_and_changes_nothing(bot) -> None:
    from apps.audit.models import AuditPolicy

    item = AuditPolicy.objects.create(name="检查")
    _, client = member("Auditor", "auditor")
    assert status(client, "audit_accesslog_changelist") == 200
    assert status(client, "audit_operatorauditentry_changelist") == 200
    assert status(client, "audit_ledgerentry_changelist") == 200
    page = client.get(reverse("admin:audit_auditpolicy_change", args=[item.pk]))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    for name in ("audit_auditpolicy_add", "audit_reviewcase_changelist", "bots_turn_changelist"):
        assert status(client, name) == 403, name


def test_a_role_is_given_on_the_user_page_with_translated_names(admin_client) -> None:
    user = User.objects.create_user("newbie", password="x", is_staff=True)
    role = Group.objects.get(name="Compliance officer")
    page = admin_client.get(reverse("admin:auth_user_change", args=[user.pk])).content.decode()
    assert f'type="checkbox" name="groups" value="{role.pk}"' in page
    assert "合规专员" in page  # the role, in the default language (zh-hans)
    view_bot = Permission.objects.get(codename="view_bot")
    assert f'value="{view_bot.pk}">' in page and "可以查看机器人" in page
    decide = Permission.objects.get(codename="decide_reviewcase")
    assert f'value="{decide.pk}">' in page and "Can decide review cases" not in page

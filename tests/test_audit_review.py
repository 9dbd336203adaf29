"""Review cases in the admin: officer scoping (guardian), access reasons, decisions, exports."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from apps.audit.models import (
    AccessLog,
    Action,
    ArchivedMessage,
    ArchiveSource,
    AuditPolicy,
    LedgerEntry,
    OperatorAuditEntry,
    PolicyWordList,
    ReviewCase,
    SensitiveWordList,
)
from apps.audit.services.ledger import ledger_verify
from apps.audit.services.policy import policy_evaluate
from apps.audit.services.review import review_cases_open_for_turn, review_scope_set
from apps.bots.models import Conversation, Turn
from tests.access_reason import REASON, open_with_reason

pytestmark = pytest.mark.django_db

OFFICER_PERMS = (
    "view_reviewcase",
    "decide_reviewcase",
    "export_reviewcase",
    "view_archivedmessage",
    "export_archivedmessage",
)


@pytest.fixture
def officers() -> Group:
    group = Group.objects.create(name="合规专员")
    group.permissions.set(
        Permission.objects.filter(content_type__app_label="audit", codename__in=OFFICER_PERMS)
    )
    return group


def officer_client(officers: Group, username: str) -> tuple[User, Client]:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.groups.add(officers)
    client = Client()
    client.force_login(user)
    return user, client


@pytest.fixture
def policy() -> AuditPolicy:
    policy = AuditPolicy.objects.create(name="答案检查")
    words = SensitiveWordList.objects.create(name="内部", words="内部价格")
    PolicyWordList.objects.create(policy=policy, word_list=words, action=Action.FLAG)
    return policy


def flagged_turn(bot, policy: AuditPolicy, answer: str) -> ReviewCase:
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid="wangwu")
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=f"m-{bot.slug}",
        stream_id=f"s-{bot.slug}",
        question="报价多少？",
        answer=answer,
        status=Turn.Status.ANSWERED,
        received_at=timezone.now(),
    )
    policy.bots.add(bot)
    policy.refresh_from_db()
    decision = policy_evaluate(policies=[policy], text=answer)
    (case,) = review_cases_open_for_turn(turn=turn, decision=decision, policies=[policy])
    return case


@pytest.fixture
def scenario(make_bot, policy, officers, admin_user):
    """Officer A reviews the HR bot, officer B the IT bot; each bot has one flagged answer."""
    hr, it = make_bot(), make_bot(name="IT助手", slug="it")
    case_a = flagged_turn(hr, policy, "内部价格是一百元")
    case_b = flagged_turn(it, policy, "内部价格是两百元")
    officer_a, client_a = officer_client(officers, "officer_a")
    officer_b, client_b = officer_client(officers, "officer_b")
    review_scope_set(officer=officer_a, bots=[hr], sources=[], actor=admin_user)
    review_scope_set(officer=officer_b, bots=[it], sources=[], actor=admin_user)
    return {"a": (officer_a, client_a, case_a), "b": (officer_b, client_b, case_b)}


def change_url(case: ReviewCase) -> str:
    return reverse("admin:audit_reviewcase_change", args=[case.pk])


def test_officer_lists_and_opens_only_cases_of_assigned_bots(scenario) -> None:
    _, client_a, case_a = scenario["a"]
    _, _, case_b = scenario["b"]
    # The list shows A's case and not B's
    listing = client_a.get(reverse("admin:audit_reviewcase_changelist")).content.decode()
    assert change_url(case_a) in listing and change_url(case_b) not in listing
    # B's case answers 404, with or without a reason, and leaves no access-log row
    assert open_with_reason(client_a, change_url(case_b)).status_code == 404
    assert client_a.get(change_url(case_b)).status_code == 404
    # Opening A's own case first asks why, without showing the content or logging
    # (the list itself logs the records whose snippets it showed, issue 17)
    AccessLog.objects.all().delete()
    ask = client_a.get(change_url(case_a))
    assert ask.status_code == 200 and "access-reason-form" in ask.content.decode()
    assert "内部价格是一百元" not in ask.content.decode()
    assert not AccessLog.objects.exists()
    # With a reason the transcript is shown and the access is logged
    page = open_with_reason(client_a, change_url(case_a))
    assert page.status_code == 200 and "<mark>内部价格</mark>是一百元" in page.content.decode()
    log = AccessLog.objects.get(object_type="audit.reviewcase")
    assert (log.username, log.action, log.reason) == ("officer_a", "view", REASON["reason"])
    # The flagged turn the page shows is logged under the same reason
    shown = AccessLog.objects.get(object_type="bots.turn")
    assert (shown.object_id, shown.reason) == (str(case_a.turn_id), REASON["reason"])
    assert (log.object_type, log.object_id) == ("audit.reviewcase", str(case_a.pk))
    assert log.request_id  # the middleware's id, to correlate with the server logs


def test_assignment_page_grants_scope_through_guardian(scenario, admin_client) -> None:
    officer_a, client_a, _ = scenario["a"]
    _, _, case_b = scenario["b"]
    it = case_b.bot
    hr = scenario["a"][2].bot
    response = admin_client.post(
        reverse("admin:audit_reviewcase_scope"),
        {"officer": officer_a.pk, "bots": [hr.pk, it.pk], "archive_sources": []},
    )
    assert response.status_code == 302
    assert open_with_reason(client_a, change_url(case_b)).status_code == 200
    entry = OperatorAuditEntry.objects.filter(action="audit.review_scope.update").latest("id")
    assert entry.actor_username == "admin" and entry.after["bots"] == sorted([hr.pk, it.pk])


def test_officer_decides_a_case_and_the_decision_is_audited(scenario) -> None:
    officer_a, client_a, case_a = scenario["a"]
    _, _, case_b = scenario["b"]
    # A cannot decide B's case, nor take it through a bulk action
    response = client_a.post(change_url(case_b), {"decision": "confirmed", "note": "x"})
    assert response.status_code == 404
    changelist = reverse("admin:audit_reviewcase_changelist")
    client_a.post(
        changelist, {"action": "assign_to_me", "_selected_action": [case_a.pk, case_b.pk]}
    )
    case_a.refresh_from_db()
    case_b.refresh_from_db()
    assert (case_a.assignee, case_b.assignee) == (officer_a, None)
    # A decides their own from the change form, which they open with a reason first
    assert open_with_reason(client_a, change_url(case_a)).status_code == 200
    response = client_a.post(change_url(case_a), {"decision": "confirmed", "note": "已提醒"})
    assert response.status_code == 302
    case_a.refresh_from_db()
    assert (case_a.status, case_a.decision, case_a.decided_by) == (
        "decided",
        "confirmed",
        officer_a,
    )
    entry = OperatorAuditEntry.objects.get(action="audit.review_case.decide")
    assert entry.before["status"] == "open" and entry.after["decision"] == "confirmed"
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.REVIEW_DECISION).count() == 1
    assert ledger_verify().ok
    # A decided case is read-only
    assert client_a.post(change_url(case_a), {"decision": "dismissed"}).status_code == 403


def test_export_action_asks_a_reason_and_logs_every_record(scenario) -> None:
    _, client_a, case_a = scenario["a"]
    _, _, case_b = scenario["b"]
    url = reverse("admin:audit_reviewcase_changelist")
    selection = {"action": "export_selected", "_selected_action": [case_a.pk, case_b.pk]}
    # Without a reason: a confirmation page, no export
    ask = client_a.post(url, selection)
    assert ask.status_code == 200 and b"reason" in ask.content
    assert not AccessLog.objects.exists()
    # With a reason: a zip with the JSONL and a manifest that hashes it
    response = client_a.post(url, {**selection, **REASON})
    assert response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    manifest = json.loads(archive.read("manifest.json"))
    (entry,) = manifest["files"]
    data = archive.read(entry["name"])
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    records = [json.loads(line) for line in data.decode().splitlines()]
    # Only A's case went out, though B's id was posted too
    assert [r["id"] for r in records] == [case_a.pk]
    assert records[0]["source"]["answer"] == "内部价格是一百元"
    assert manifest["reason"] == REASON["reason"] and manifest["created_by"] == "officer_a"
    logs = AccessLog.objects.filter(action="export")
    assert [(log.object_id, log.username) for log in logs] == [(str(case_a.pk), "officer_a")]


def test_archived_message_transcript_is_scoped_and_needs_a_reason(officers) -> None:
    source = ArchiveSource.objects.create(name="总部", corp_id="ww1", secret="s")
    other = ArchiveSource.objects.create(name="分部", corp_id="ww2", secret="s")
    now = timezone.now()
    first, second, elsewhere = (
        ArchivedMessage.objects.create(
            source=src, msgid=msgid, seq=seq, publickey_ver=1, action="send", sender=sender,
            tolist=[to], msgtime=now, msgtype="text", text=text,
        )
        for src, msgid, seq, sender, to, text in [
            (source, "m1", 1, "zhangsan", "lisi", "周五开会"),
            (source, "m2", 2, "lisi", "zhangsan", "好的收到"),
            (other, "m3", 1, "zhaoliu", "qianqi", "分部消息"),
        ]
    )  # fmt: skip
    officer, client = officer_client(officers, "officer_c")
    assign_perm("audit.review_archivesource", officer, source)
    listing = client.get(reverse("admin:audit_archivedmessage_changelist")).content.decode()
    assert "周五开会" in listing and "分部消息" not in listing
    url = reverse("admin:audit_archivedmessage_change", args=[first.pk])
    assert "access-reason-form" in client.get(url).content.decode()
    page = open_with_reason(client, url).content.decode()
    assert "周五开会" in page and "好的收到" in page  # the conversation around it
    other_url = reverse("admin:audit_archivedmessage_change", args=[elsewhere.pk])
    assert open_with_reason(client, other_url).status_code == 404
    # The opened message and the one shown around it are both logged
    logged = AccessLog.objects.filter(object_type="audit.archivedmessage")
    assert sorted(logged.values_list("object_id", flat=True)) == sorted(
        [str(first.pk), str(second.pk)]
    )


@pytest.mark.parametrize("model", ["ledgerentry", "accesslog", "operatorauditentry"])
def test_audit_record_admins_are_read_only(admin_client, model: str) -> None:
    from apps.audit.services.access import access_log_record
    from apps.audit.services.ledger import ledger_append
    from apps.audit.services.operator_audit import operator_audit_record

    admin = User.objects.get(username="admin")
    objects = {
        "ledgerentry": lambda: ledger_append(kind="turn", ref="bots.turn:1", payload={"a": 1}),
        "accesslog": lambda: access_log_record(
            user=admin, obj=admin, action="view", reason="test case"
        ),
        "operatorauditentry": lambda: operator_audit_record(
            actor=admin, action="bots.prompt.update", obj=admin, before={"a": 1}, after={"a": 2}
        ),
    }
    obj = objects[model]()
    assert admin_client.get(reverse(f"admin:audit_{model}_add")).status_code == 403
    assert (
        admin_client.post(reverse(f"admin:audit_{model}_delete", args=[obj.pk])).status_code == 403
    )
    page = admin_client.get(reverse(f"admin:audit_{model}_change", args=[obj.pk]))
    assert page.status_code == 200 and b'name="_save"' not in page.content
    listing = admin_client.get(reverse(f"admin:audit_{model}_changelist"))
    assert listing.status_code == 200


def test_policy_admin_change_is_recorded_with_before_and_after(admin_client, bot, policy) -> None:
    form = {
        "name": policy.name,
        "description": "",
        "enabled": "on",
        "pii_resident_id": "off",
        "pii_mobile": "mask",
        "pii_bank_card": "off",
        "pii_email": "off",
        "regex_import_action": "flag",
        "refusal_message": "",
        "retention_days": "30",
        "legal_hold_reason": "",
        "llm_review_prompt": "",
        "llm_review_threshold": "0.8",
        "bots": [bot.pk],
        "word_list_rules-TOTAL_FORMS": "1",
        "word_list_rules-INITIAL_FORMS": "1",
        "word_list_rules-0-id": policy.word_list_rules.get().pk,
        "word_list_rules-0-policy": policy.pk,
        "word_list_rules-0-word_list": policy.word_list_rules.get().word_list_id,
        "word_list_rules-0-action": "block",
        "regex_rules-TOTAL_FORMS": "1",
        "regex_rules-INITIAL_FORMS": "0",
        "regex_rules-0-name": "工号",
        "regex_rules-0-pattern": r"E\d{6}",
        "regex_rules-0-action": "mask",
    }
    response = admin_client.post(reverse("admin:audit_auditpolicy_change", args=[policy.pk]), form)
    assert response.status_code == 302, response.content.decode()[:3000]
    entry = OperatorAuditEntry.objects.get(action="audit.policy.update")
    assert entry.before["bots"] == [] and entry.after["bots"] == [bot.pk]
    assert entry.before["pii_mobile"] == "off" and entry.after["pii_mobile"] == "mask"
    assert entry.after["regex_rules"] == [{"pattern": r"E\d{6}", "action": "mask"}]
    assert entry.after["word_list_rules"][0]["action"] == "block"
    assert "name" not in entry.after  # only what changed
    # An invalid regex in the inline is refused with the regex error
    form["regex_rules-0-pattern"] = "E(\\d"
    form["regex_rules-INITIAL_FORMS"] = "0"
    response = admin_client.post(
        reverse("admin:audit_auditpolicy_change", args=[policy.pk]), form, HTTP_ACCEPT_LANGUAGE="en"
    )
    assert response.status_code == 200 and "Invalid regular expression" in response.content.decode()


def test_every_audit_admin_page_renders(admin_client, admin_user, scenario) -> None:
    from django.contrib import admin
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = admin_user
    source = ArchiveSource.objects.create(name="总部", corp_id="ww1", secret="Archive-S3cret-Value")
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label != "audit":
            continue
        name = model._meta.model_name
        assert admin_client.get(reverse(f"admin:audit_{name}_changelist")).status_code == 200
        if model_admin.has_add_permission(request):
            assert admin_client.get(reverse(f"admin:audit_{name}_add")).status_code == 200
    page = admin_client.get(reverse("admin:audit_archivesource_change", args=[source.pk]))
    assert page.status_code == 200 and b"Archive-S3cret-Value" not in page.content
    officer = scenario["a"][0]
    scope = admin_client.get(reverse("admin:audit_reviewcase_scope"), {"officer": officer.pk})
    assert scope.status_code == 200


def test_archive_source_secrets_and_keys_are_write_only(admin_client) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from apps.audit.models import ArchiveKey

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    form = {
        "name": "总部", "corp_id": "ww1", "enabled": "on", "new_secret": "Archive-S3cret",
        "proxy": "",
        "new_proxy_password": "", "timeout_seconds": "30", "pull_interval_minutes": "10",
        "batch_size": "1000", "keys-TOTAL_FORMS": "1", "keys-INITIAL_FORMS": "0",
        "keys-0-publickey_ver": "2", "keys-0-new_private_key": pem,
    }  # fmt: skip
    response = admin_client.post(reverse("admin:audit_archivesource_add"), form)
    assert response.status_code == 302, response.content.decode()[:3000]
    source = ArchiveSource.objects.get()
    key = ArchiveKey.objects.get()
    assert source.secret == "Archive-S3cret" and key.private_key.strip() == pem.strip()
    assert len(key.fingerprint) == 64
    page = admin_client.get(reverse("admin:audit_archivesource_change", args=[source.pk]))
    content = page.content.decode()
    assert "Archive-S3cret" not in content and "PRIVATE KEY" not in content
    assert key.fingerprint in content
    entry = OperatorAuditEntry.objects.get(action="audit.archive_source.create")
    assert entry.after["secret"] == "(set)" and "Archive-S3cret" not in str(entry.after)
    assert entry.after["keys"] == [{"publickey_ver": 2, "fingerprint": key.fingerprint}]
    # A pasted key that is not an RSA private key is refused
    form.update({"name": "分部", "keys-0-new_private_key": "-----BEGIN NOTHING-----"})
    response = admin_client.post(reverse("admin:audit_archivesource_add"), form)
    assert response.status_code == 200 and ArchiveSource.objects.count() == 1


def test_case_list_filters_by_department_and_bot(admin_client, bot) -> None:
    from django.utils import timezone

    from apps.bots.models import Conversation, Turn
    from apps.directory.models import DirectoryUser

    DirectoryUser.objects.create(userid="hr-ann", departments=["HR"])
    DirectoryUser.objects.create(userid="eng-bo", departments=["Engineering"])
    cases = {}
    for userid in ("hr-ann", "eng-bo"):
        conversation = Conversation.objects.create(bot=bot, chat_type="single", userid=userid)
        turn = Turn.objects.create(
            bot=bot,
            conversation=conversation,
            msgid=f"m-{userid}",
            stream_id=f"s-{userid}",
            question="q",
            received_at=timezone.now(),
        )
        cases[userid] = ReviewCase.objects.create(turn=turn, bot=bot, action="flag")
    url = reverse("admin:audit_reviewcase_changelist")
    page = admin_client.get(url, {"department": "HR"})
    assert page.status_code == 200
    shown = {case.pk for case in page.context["cl"].result_list}
    assert shown == {cases["hr-ann"].pk}
    page = admin_client.get(url, {"bot": bot.pk})
    assert {case.pk for case in page.context["cl"].result_list} == {c.pk for c in cases.values()}

"""Issue 17, item 3: review triage. The list shows user, bot, policy and a highlighted
snippet (access-logged); the case page has decision buttons, previous/next within the
officer's scope and filter, and a link to the conversation; bulk decisions are audited."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import (
    AccessLog,
    Action,
    AuditPolicy,
    OperatorAuditEntry,
    PolicyWordList,
    ReviewCase,
    SensitiveWordList,
)
from apps.audit.services.policy import policy_evaluate
from apps.audit.services.review import (
    review_cases_open_for_turn,
    review_decide,
    review_scope_set,
)
from apps.bots.models import Conversation, Turn
from tests.access_reason import open_with_reason
from tests.test_audit_review import OFFICER_PERMS, officer_client

pytestmark = pytest.mark.django_db

LIST = "admin:audit_reviewcase_changelist"


def change_url(case: ReviewCase, filters: str = "") -> str:
    url = reverse("admin:audit_reviewcase_change", args=[case.pk])
    return f"{url}?{urlencode({'_changelist_filters': filters})}" if filters else url


def flagged(bot, policy: AuditPolicy, answer: str, userid: str) -> ReviewCase:
    """A flagged answer in its own conversation (`flagged_turn` makes one per bot only)."""
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid=userid)
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=f"m-{userid}",
        stream_id=f"s-{userid}",
        question="报价多少？",
        answer=answer,
        status=Turn.Status.ANSWERED,
        received_at=timezone.now(),
    )
    policy.bots.add(bot)
    decision = policy_evaluate(policies=[policy], text=answer)
    (case,) = review_cases_open_for_turn(turn=turn, decision=decision, policies=[policy])
    return case


@pytest.fixture
def triage(make_bot, admin_user):
    policy = AuditPolicy.objects.create(name="答案检查")
    words = SensitiveWordList.objects.create(name="内部", words="内部价格")
    PolicyWordList.objects.create(policy=policy, word_list=words, action=Action.FLAG)
    officers = Group.objects.create(name="合规专员")
    officers.permissions.set(
        Permission.objects.filter(content_type__app_label="audit", codename__in=OFFICER_PERMS)
    )
    hr, it = make_bot(), make_bot(name="IT助手", slug="it")
    cases = [
        flagged(hr, policy, text, userid)
        for text, userid in (
            ("第一条：内部价格<b>是</b>一百元", "wangwu"),
            ("第二条内部价格", "lisi"),
            ("第三条 内部价格 三百", "zhaoliu"),
        )
    ]
    it_case = flagged(it, policy, "内部价格是两百元", "it-user")
    officer_a, client_a = officer_client(officers, "officer_a")
    officer_b, client_b = officer_client(officers, "officer_b")
    review_scope_set(officer=officer_a, bots=[hr], sources=[], actor=admin_user)
    review_scope_set(officer=officer_b, bots=[it], sources=[], actor=admin_user)
    return {"cases": cases, "it_case": it_case, "a": client_a, "b": client_b, "hr": hr}


def test_list_shows_user_bot_policy_and_escaped_highlighted_snippet(triage) -> None:
    page = triage["a"].get(reverse(LIST))
    html = page.content.decode()
    assert page.status_code == 200
    assert "wangwu" in html and "HR助手" in html and "答案检查" in html
    assert "第一条：<mark>内部价格</mark>&lt;b&gt;是&lt;/b&gt;一百元" in html
    assert "两百元" not in html  # the other team's case
    # The snippets are content: every turn the list showed is access-logged
    logged = set(
        AccessLog.objects.filter(object_type="bots.turn", username="officer_a").values_list(
            "object_id", flat=True
        )
    )
    assert logged == {str(case.turn_id) for case in triage["cases"]}


def test_list_access(triage) -> None:
    anonymous = Client().get(reverse(LIST))
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    staff = User.objects.create_user("staff", password="x", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(reverse(LIST)).status_code == 403
    assert client.get(change_url(triage["cases"][0])).status_code == 404


def test_case_page_has_decision_buttons_and_conversation_link(triage) -> None:
    case = triage["cases"][0]
    html = open_with_reason(triage["a"], change_url(case)).content.decode()
    assert 'name="decision" value="dismissed"' in html
    assert 'name="decision" value="confirmed"' in html
    assert '<select name="decision"' not in html
    conversation = reverse("admin:bots_conversation_change", args=[case.turn.conversation_id])
    assert f'href="{conversation}"' in html
    # A button press decides with the note; the decision is audited
    response = triage["a"].post(change_url(case), {"decision": "dismissed", "note": "误报"})
    assert response.status_code == 302
    case.refresh_from_db()
    assert (case.decision, case.note) == ("dismissed", "误报")
    assert OperatorAuditEntry.objects.filter(action="audit.review_case.decide").count() == 1
    # The other team's officer cannot open or decide it
    assert open_with_reason(triage["b"], change_url(triage["cases"][1])).status_code == 404
    response = triage["b"].post(change_url(triage["cases"][1]), {"decision": "confirmed"})
    assert response.status_code == 404


def test_view_only_officer_gets_no_buttons_and_no_bulk_decision(triage, admin_user) -> None:
    viewer = User.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_reviewcase"))
    review_scope_set(officer=viewer, bots=[triage["hr"]], sources=[], actor=admin_user)
    client = Client()
    client.force_login(viewer)
    case = triage["cases"][0]
    html = open_with_reason(client, change_url(case)).content.decode()
    assert 'name="decision"' not in html
    client.post(reverse(LIST), {"action": "decide_confirm", "_selected_action": [case.pk]})
    case.refresh_from_db()
    assert case.status == "open"


def test_previous_and_next_stay_in_scope_and_filter(triage, admin_user) -> None:
    first, second, third = triage["cases"]  # newest first in the list: third, second, first
    html = open_with_reason(triage["a"], change_url(second)).content.decode()
    assert f'href="{change_url(third)}" id="case-previous"' in html
    assert f'href="{change_url(first)}" id="case-next"' in html
    # With the list filtered to open cases, a decided neighbour is skipped
    review_decide(case=third, user=admin_user, decision="dismissed")
    filters = "status__exact=open"
    html = open_with_reason(triage["a"], change_url(second, filters)).content.decode()
    assert 'id="case-previous"' not in html
    assert f'href="{change_url(first, filters)}"'.replace("&", "&amp;") in html
    # The other team's case is never a neighbour
    assert change_url(triage["it_case"]) not in html


def test_bulk_decide_decides_only_cases_in_scope_each_audited(triage) -> None:
    ids = [case.pk for case in triage["cases"][:2]] + [triage["it_case"].pk]
    triage["a"].post(reverse(LIST), {"action": "decide_confirm", "_selected_action": ids})
    decided = ReviewCase.objects.filter(status="decided")
    assert set(decided.values_list("pk", flat=True)) == set(ids[:2])
    entries = OperatorAuditEntry.objects.filter(action="audit.review_case.decide")
    assert sorted(int(e.object_id) for e in entries) == sorted(ids[:2])


def test_admin_sees_every_case(triage, admin_client) -> None:
    html = admin_client.get(reverse(LIST)).content.decode()
    assert "两百元" in html and "一百元" in html


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_cases_export_as_csv_and_xlsx_with_manifest(triage, fmt: str) -> None:
    import csv
    import hashlib
    import io
    import json
    import zipfile

    from openpyxl import load_workbook

    from tests.access_reason import REASON

    first = triage["cases"][0]
    ReviewCase.objects.filter(pk=first.pk).update(note="=HYPERLINK(1)")
    selection = {
        "action": f"export_selected_{fmt}",
        "_selected_action": [first.pk, triage["it_case"].pk],
    }
    # Without a reason nothing is exported; with one, a zip of the table and its manifest
    ask = triage["a"].post(reverse(LIST), selection)
    assert ask.status_code == 200 and fmt.upper() in ask.content.decode()
    assert not AccessLog.objects.filter(action="export").exists()
    response = triage["a"].post(reverse(LIST), {**selection, **REASON})
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    manifest = json.loads(archive.read("manifest.json"))
    (entry,) = manifest["files"]
    assert entry["name"] == f"review_cases.{fmt}" and entry["records"] == 1
    data = archive.read(entry["name"])
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    else:
        sheet = load_workbook(io.BytesIO(data), read_only=True).active
        rows = [
            [str(v) if v is not None else "" for v in r] for r in sheet.iter_rows(values_only=True)
        ]
    header, *records = rows
    # Only the officer's own case went out (the other team's id was posted too)
    assert len(records) == 1
    row = dict(zip(header, records[0], strict=True))
    assert (row["id"], row["user"], row["policy"]) == (str(first.pk), "wangwu", "答案检查")
    assert "内部价格" in row["matched"] and "一百元" in row["text"]
    # A note a spreadsheet would run as a formula is defused
    assert row["note"] == "'=HYPERLINK(1)"
    logs = AccessLog.objects.filter(action="export")
    assert [(log.object_id, log.username) for log in logs] == [(str(first.pk), "officer_a")]


def test_a_decision_goes_on_to_the_next_case_of_the_list(triage) -> None:
    first, second, third = triage["cases"]
    filters = "status__exact=open"
    assert open_with_reason(triage["a"], change_url(third, filters)).status_code == 200
    response = triage["a"].post(change_url(third, filters), {"decision": "confirmed"})
    assert response.status_code == 302 and response["Location"] == change_url(second, filters)
    # The last case of the list goes back to the list
    assert open_with_reason(triage["a"], change_url(first, filters)).status_code == 200
    response = triage["a"].post(change_url(first, filters), {"decision": "dismissed"})
    assert response.status_code == 302 and response["Location"].startswith(reverse(LIST))
    # A decision without a choice re-shows the buttons
    assert open_with_reason(triage["a"], change_url(second)).status_code == 200
    page = triage["a"].post(change_url(second), {"note": "x"})
    assert page.status_code == 200 and 'name="decision" value="dismissed"' in page.content.decode()


def test_export_command_writes_cases_as_csv(triage, tmp_path) -> None:
    import csv
    import json
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    from apps.audit.services.export import manifest_check

    out = tmp_path / "export"
    args = ("--out", str(out), "--user", "officer_a", "--reason", "监管调取 2026-17")
    call_command("audit_export", "cases", *args, "--format", "csv", stdout=StringIO())
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["name"] for f in manifest["files"]] == ["review_cases.csv"]
    assert manifest_check(out) == []
    rows = list(csv.DictReader((out / "review_cases.csv").open(encoding="utf-8-sig")))
    assert sorted(int(r["id"]) for r in rows) == sorted(c.pk for c in triage["cases"])
    with pytest.raises(CommandError):
        call_command(
            "audit_export", "messages", "--out", str(tmp_path / "m"), *args[2:], "--format", "csv"
        )

"""Issue 17, item 4: the officer-assignment page is reachable from the user, bot,
archive-source and review-list pages, and assigns by officer or by bot/source."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from apps.audit.models import ArchiveSource, OperatorAuditEntry
from apps.audit.services.review import review_scope, review_scope_set
from tests.security.test_officer_scope import staff_with

pytestmark = pytest.mark.django_db

SCOPE = "admin:audit_reviewcase_scope"


@pytest.fixture
def setup(make_bot, admin_user):
    hr, it = make_bot(), make_bot(name="IT助手", slug="it")
    hq = ArchiveSource.objects.create(name="总部", corp_id="ww1", secret="s")
    officer = User.objects.create_user("officer_wang", password="x", is_staff=True)
    other = User.objects.create_user("officer_li", password="x", is_staff=True)
    review_scope_set(officer=officer, bots=[hr], sources=[hq], actor=admin_user)
    return {"hr": hr, "it": it, "hq": hq, "officer": officer, "other": other}


def test_bot_source_user_and_case_list_pages_link_the_assignment_page(setup, admin_client):
    scope = reverse(SCOPE)
    bot_page = admin_client.get(reverse("admin:bots_bot_change", args=[setup["hr"].pk]))
    html = bot_page.content.decode()
    assert f"{scope}?bot={setup['hr'].pk}" in html and "officer_wang" in html
    source_page = admin_client.get(
        reverse("admin:audit_archivesource_change", args=[setup["hq"].pk])
    ).content.decode()
    assert f"{scope}?source={setup['hq'].pk}" in source_page and "officer_wang" in source_page
    user_page = admin_client.get(
        reverse("admin:auth_user_change", args=[setup["officer"].pk])
    ).content.decode()
    assert f"{scope}?officer={setup['officer'].pk}" in user_page
    cases = admin_client.get(reverse("admin:audit_reviewcase_changelist")).content.decode()
    assert f'href="{scope}"' in cases
    # A bot nobody reviews says so
    it_page = admin_client.get(reverse("admin:bots_bot_change", args=[setup["it"].pk]))
    assert "未分配专员" in it_page.content.decode()  # the default language: zh-hans


def test_links_are_hidden_from_those_who_may_not_assign(setup) -> None:
    _, client = staff_with(
        "it_admin", "bots.view_bot", "bots.change_bot", "auth.view_user", "auth.change_user"
    )
    scope = reverse(SCOPE)
    for url in (
        reverse("admin:bots_bot_change", args=[setup["hr"].pk]),
        reverse("admin:auth_user_change", args=[setup["officer"].pk]),
    ):
        page = client.get(url)
        assert page.status_code == 200
        assert scope not in page.content.decode()
    assert client.get(f"{scope}?bot={setup['hr'].pk}").status_code == 403


def test_scope_page_access(setup, admin_client) -> None:
    url = f"{reverse(SCOPE)}?bot={setup['hr'].pk}"
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    _, staff = staff_with("plain")
    assert staff.get(url).status_code == 403
    assert admin_client.get(f"{reverse(SCOPE)}?bot=999999").status_code == 404
    assert admin_client.get(f"{reverse(SCOPE)}?source=x").status_code == 404


def test_assign_officers_from_the_bot_page_keeps_their_other_scope(setup, admin_client):
    hr, it, hq, officer, other = (setup[k] for k in ("hr", "it", "hq", "officer", "other"))
    review_scope_set(officer=other, bots=[hr], sources=[], actor=officer)
    url = f"{reverse(SCOPE)}?bot={it.pk}"
    audited = OperatorAuditEntry.objects.filter(action="audit.review_scope.update")
    before = audited.count()
    page = admin_client.get(url)
    # Checkboxes: a plain click cannot drop the other selections
    assert 'type="checkbox" name="officers"' in page.content.decode()
    response = admin_client.post(url, {"officers": [officer.pk, other.pk]})
    assert response.status_code == 302
    assert review_scope(officer=officer) == {
        "bots": sorted([hr.pk, it.pk]),
        "archive_sources": [hq.pk],
    }
    assert review_scope(officer=other)["bots"] == sorted([hr.pk, it.pk])
    # Unticking one officer removes only this bot from their scope, audited per officer
    admin_client.post(url, {"officers": [other.pk]})
    assert review_scope(officer=officer) == {"bots": [hr.pk], "archive_sources": [hq.pk]}
    assert audited.count() == before + 3
    assert audited.latest("id").after["bots"] == [hr.pk]


def test_assign_officers_from_the_archive_source_page(setup, admin_client):
    hq, other = setup["hq"], setup["other"]
    url = f"{reverse(SCOPE)}?source={hq.pk}"
    assert admin_client.post(url, {"officers": [other.pk]}).status_code == 302
    assert review_scope(officer=other)["archive_sources"] == [hq.pk]
    assert review_scope(officer=setup["officer"])["archive_sources"] == []


def test_officer_page_uses_checkboxes(setup, admin_client):
    page = admin_client.get(f"{reverse(SCOPE)}?officer={setup['officer'].pk}").content.decode()
    assert 'type="checkbox" name="bots"' in page
    assert f'type="checkbox" name="bots" value="{setup["hr"].pk}"' in page


def test_officers_the_page_does_not_list_keep_their_scope(setup, admin_client):
    hr, officer, other = setup["hr"], setup["officer"], setup["other"]
    officer.is_active = False
    officer.save()
    url = f"{reverse(SCOPE)}?bot={hr.pk}"
    assert f'value="{officer.pk}"' not in admin_client.get(url).content.decode()
    admin_client.post(url, {"officers": [other.pk]})
    assert review_scope(officer=officer)["bots"] == [hr.pk]
    assert review_scope(officer=other)["bots"] == [hr.pk]

"""Issue 17, item 4: every list filter an officer sees is scoped like the rows it filters.

Officer A reviews the HR bot only. The IT bot's policy, department and assignee must not
appear among A's filter choices, although an IT case uses them.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from apps.audit.models import Action, AuditPolicy, PolicyWordList, SensitiveWordList
from apps.audit.services.review import review_assign, review_scope_set
from apps.bots.models import Conversation
from apps.directory.models import DirectoryUser
from tests.test_audit_review import OFFICER_PERMS, flagged_turn, officer_client

pytestmark = pytest.mark.django_db


def _policy(name: str, word: str) -> AuditPolicy:
    policy = AuditPolicy.objects.create(name=name)
    words = SensitiveWordList.objects.create(name=name, words=word)
    PolicyWordList.objects.create(policy=policy, word_list=words, action=Action.FLAG)
    return policy


@pytest.fixture
def two_teams(make_bot, admin_user):
    from django.contrib.auth.models import Permission

    officers = Group.objects.create(name="合规专员")
    officers.permissions.set(
        Permission.objects.filter(content_type__app_label="audit", codename__in=OFFICER_PERMS)
    )
    hr, it = make_bot(), make_bot(name="IT助手", slug="it")
    hr_case = flagged_turn(hr, _policy("人事检查", "内部价格"), "内部价格是一百元")
    it_case = flagged_turn(it, _policy("研发机密策略", "源代码"), "源代码在这里")
    Conversation.objects.filter(pk=hr_case.turn.conversation_id).update(userid="hr-ann")
    Conversation.objects.filter(pk=it_case.turn.conversation_id).update(userid="dev-bo")
    DirectoryUser.objects.create(userid="hr-ann", departments=["人力资源部"])
    DirectoryUser.objects.create(userid="dev-bo", departments=["绝密研发部"])
    officer_a, client_a = officer_client(officers, "officer_a")
    officer_b, _ = officer_client(officers, "officer_it_secret")
    review_scope_set(officer=officer_a, bots=[hr], sources=[], actor=admin_user)
    review_scope_set(officer=officer_b, bots=[it], sources=[], actor=admin_user)
    review_assign(case=it_case, assignee=officer_b, actor=admin_user)
    return {"client_a": client_a, "hr": hr, "it": it}


def test_review_filters_offer_only_what_the_officer_reviews(two_teams) -> None:
    page = two_teams["client_a"].get(reverse("admin:audit_reviewcase_changelist"))
    assert page.status_code == 200
    html = page.content.decode()
    # The officer's own bot, policy and department are offered
    assert "人事检查" in html and "人力资源部" in html and "HR助手" in html
    # Other teams' policy, department, bot and officer are not named anywhere on the page
    for leaked in ("研发机密策略", "绝密研发部", "IT助手", "officer_it_secret"):
        assert leaked not in html, leaked


def test_superuser_filters_still_offer_everything(two_teams, admin_client) -> None:
    html = admin_client.get(reverse("admin:audit_reviewcase_changelist")).content.decode()
    for name in ("人事检查", "研发机密策略", "人力资源部", "绝密研发部", "officer_it_secret"):
        assert name in html, name

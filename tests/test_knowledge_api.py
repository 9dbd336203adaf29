"""REST search: token auth, and the same audience filter as the bot, decided by who asks."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.urls import include, path
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.directory.services import directory_user_save

# The project includes apps.knowledge.urls under /api/; these tests do the same.
urlpatterns = [path("api/", include("apps.knowledge.urls"))]

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]

URL = "/api/knowledge/search/"
QUESTION = "差旅报销标准"


@pytest.fixture(autouse=True)
def finance_kb(settings, tmp_path: Path) -> None:
    """A finance-only knowledge base; alice works in finance, bob in engineering."""
    settings.MEDIA_ROOT = str(tmp_path / "media")
    policy = tmp_path / "travel.md"
    policy.write_text("# 差旅\n\n差旅报销标准：住宿每晚不超过五百元。", encoding="utf-8")
    call_command(
        "kb_ingest", "finance", str(policy), "--department", "财务部", stdout=io.StringIO()
    )
    directory_user_save(userid="alice", departments=["财务部"])
    directory_user_save(userid="bob", departments=["研发部"])


def client_for(django_user_model, username: str, *, staff: bool = False, perms=()) -> APIClient:
    user = django_user_model.objects.create_user(username, password="unused", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def documents(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [hit["document"] for hit in response.json()["hits"]]


def test_search_needs_a_valid_token() -> None:
    anonymous = APIClient()
    assert anonymous.get(URL, {"q": QUESTION}).status_code == 401
    anonymous.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert anonymous.get(URL, {"q": QUESTION}).status_code == 401


def test_employees_search_as_themselves(django_user_model) -> None:
    alice = client_for(django_user_model, "alice")
    bob = client_for(django_user_model, "bob")

    response = alice.get(URL, {"q": QUESTION, "kb": "finance"})
    assert documents(response) == ["travel.md"]
    hit = response.json()["hits"][0]
    assert hit["heading"] == "差旅" and "五百元" in hit["text"] and hit["document_version"] == 1
    assert response.json()["userid"] == "alice"
    assert documents(bob.get(URL, {"q": QUESTION})) == []
    # and only holders of the search permission may ask as somebody else
    assert bob.get(URL, {"q": QUESTION, "userid": "alice"}).status_code == 403


def test_permission_holders_see_everything_or_search_as_an_employee(django_user_model) -> None:
    # (staff without the permission: tests/security/test_knowledge_boundary.py)
    ops = client_for(django_user_model, "ops", perms=["search_all_audiences"])

    assert documents(ops.get(URL, {"q": QUESTION, "reason": "r"})) == ["travel.md"]
    assert documents(ops.get(URL, {"q": QUESTION, "userid": "bob", "reason": "r"})) == []
    assert documents(ops.get(URL, {"q": QUESTION, "userid": "alice", "reason": "r"})) == [
        "travel.md"
    ]
    assert ops.get(URL, {"q": QUESTION, "kb": "nope", "reason": "r"}).status_code == 400
    assert ops.get(URL, {"top_k": 3}).status_code == 400

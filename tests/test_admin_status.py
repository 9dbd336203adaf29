"""The admin's header (product name, language switcher, status link) and the status page."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import translation

from apps.inference.engine.base import EngineLoad
from apps.inference.model_load import model_load_publish

pytestmark = pytest.mark.django_db

STATUS = "admin-status"


def _login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(("language", "name"), [("zh-hans", "企业微信 AI"), ("en", "WeCom AI")])
def test_the_header_names_the_product_and_links_the_status_page(admin_client, language, name):
    page = admin_client.get(reverse("admin:index"), HTTP_ACCEPT_LANGUAGE=language).content.decode()
    assert (
        f"<title>{'管理' if language == 'zh-hans' else 'Administration'} | {name}</title>" in page
    )
    assert f'<div id="site-name"><a href="/admin/">{name}</a></div>' in page
    assert "Django" not in page
    assert f'href="{reverse(STATUS)}"' in page
    assert "View site" not in page and "查看站点" not in page


def test_the_language_switcher_is_in_the_header_even_before_sign_in(client):
    page = client.get(reverse("admin:login")).content.decode()
    assert f'action="{reverse("set_language")}"' in page
    assert 'value="zh-hans"' in page and 'value="en"' in page
    assert "简体中文" in page and "English" in page


def test_switching_the_language_keeps_the_page(admin_client):
    response = admin_client.post(
        reverse("set_language"),
        {"language": "en", "next": reverse("admin:bots_bot_changelist")},
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:bots_bot_changelist")
    page = admin_client.get(response["Location"], HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert '<html lang="en"' in page and "WeCom AI" in page
    admin_client.post(reverse("set_language"), {"language": "zh-hans", "next": "/admin/"})
    page = admin_client.get("/admin/").content.decode()
    assert '<html lang="zh-hans"' in page and "企业微信 AI" in page


def test_the_status_page_is_for_staff_only(client):
    anonymous = client.get(reverse(STATUS))
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    employee = User.objects.create_user("emp", password="x-Very-Long-Pass-1")
    not_staff = _login(employee).get(reverse(STATUS))
    assert not_staff.status_code == 302 and "login" in not_staff["Location"]
    clerk = User.objects.create_user("clerk", password="x-Very-Long-Pass-1", is_staff=True)
    assert _login(clerk).get(reverse(STATUS)).status_code == 200


def test_the_status_page_shows_database_redis_workers_models_and_version(
    admin_client, model_profile, settings
):
    settings.APP_VERSION = "17.5.0"
    response = admin_client.get(reverse(STATUS), HTTP_ACCEPT_LANGUAGE="en")
    services = {check.name: check for check in response.context["services"]}
    assert services["Database"].ok and services["Database"].detail.startswith("PostgreSQL ")
    assert services["Redis"].ok and services["Redis"].detail.startswith("Redis ")
    assert not services["Workers"].ok and services["Workers"].detail == "no worker answered"
    [model] = response.context["models"]
    assert model.name == model_profile.name and not model.ok
    page = response.content.decode()
    assert "17.5.0" in page and "llama-cpp-python" in page

    # Once an inference worker publishes the model's load, the page says it is loaded
    model_load_publish(
        profile_id=model_profile.pk,
        load=EngineLoad(slots=4, running=0, waiting=0, estimated_wait_seconds=0.0),
    )
    response = admin_client.get(reverse(STATUS), HTTP_ACCEPT_LANGUAGE="zh-hans")
    [model] = response.context["models"]
    assert model.ok and model.detail == "已由 1 个工作进程加载，共 4 个槽位"


def test_a_database_failure_is_shown_not_raised(monkeypatch):
    # A broken database cannot be produced while the test's own transaction uses it.
    from django.db import connections

    from wecom_ai.status import _database

    def refuse():
        raise RuntimeError("connection refused")

    monkeypatch.setattr(connections["default"], "cursor", refuse)
    with translation.override("en"):
        check = _database()
    assert not check.ok and check.detail == "not reachable"


@pytest.mark.slow
def test_the_status_page_lists_a_running_worker(admin_client, start_worker):
    start_worker(queues="default")
    response = admin_client.get(reverse(STATUS), HTTP_ACCEPT_LANGUAGE="en")
    services = {check.name: check for check in response.context["services"]}
    assert services["Workers"].ok and services["Workers"].detail.startswith("test-")

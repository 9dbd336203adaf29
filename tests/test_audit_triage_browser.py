"""Officer assignment from a bot's page and a decision from the triage list, in a real
headless chromium with real mouse clicks (issue 17, items 3 and 4)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse

from apps.audit.models import ReviewCase
from apps.audit.services.review import review_scope, review_scope_set
from tests.browser import Page, browser_tab
from tests.test_audit_review import flagged_turn, policy  # noqa: F401 - the policy fixture

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[Page]:
    yield from browser_tab(request)  # a screenshot in var/screenshots when the test fails


def sign_in(page: Page, live_server, user: User) -> None:
    client = Client()
    client.force_login(user)
    page.send(
        "Network.setCookie",
        name=settings.SESSION_COOKIE_NAME,
        value=client.cookies[settings.SESSION_COOKIE_NAME].value,
        url=live_server.url,
    )


def click(page: Page, selector: str) -> None:
    """A real mouse click in the middle of the element (not a scripted .click())."""
    box = page.evaluate(
        f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
        e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
        return [r.x + r.width / 2, r.y + r.height / 2]; }})()"""
    )
    for kind in ("mousePressed", "mouseReleased"):
        page.send(
            "Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1
        )


def clicking_away(page: Page, selector: str) -> None:
    page.evaluate("window.__leaving = true")
    click(page, selector)
    page.wait_for("window.__leaving === undefined && document.readyState === 'complete'")


def test_assign_an_officer_from_the_bot_page_then_decide_from_the_list(
    live_server,
    page,
    make_bot,
    policy,  # noqa: F811
):
    admin = User.objects.create_superuser("admin", "admin@example.com", "x-Very-Long-Pass-1")
    hr = make_bot()
    case = flagged_turn(hr, policy, "内部价格是一百元")
    role = Group.objects.get(name="Compliance officer")
    officer = User.objects.create_user("officer_wang", password="x", is_staff=True)
    colleague = User.objects.create_user("officer_li", password="x", is_staff=True)
    for user in (officer, colleague):
        user.groups.add(role)
    review_scope_set(officer=colleague, bots=[hr], sources=[], actor=admin)

    # The admin opens the bot, follows "Officers assigned: … · assign"
    sign_in(page, live_server, admin)
    page.goto(live_server.url + reverse("admin:bots_bot_change", args=[hr.pk]))
    assert "officer_li" in page.evaluate(
        "document.querySelector('.review-officers-link').textContent"
    )
    clicking_away(page, ".review-officers-link")
    assert f"?bot={hr.pk}" in page.evaluate("location.href")
    # A plain click on the new officer keeps the colleague ticked
    click(page, f'input[name="officers"][value="{officer.pk}"]')
    ticked = page.evaluate(
        "[...document.querySelectorAll('input[name=officers]:checked')].map(e => +e.value)"
    )
    assert sorted(ticked) == sorted([officer.pk, colleague.pk])
    clicking_away(page, '#scope-officers-form input[type="submit"]')
    assert review_scope(officer=officer)["bots"] == [hr.pk]
    assert review_scope(officer=colleague)["bots"] == [hr.pk]

    # The officer sees the case with its highlighted snippet and decides it from the list
    sign_in(page, live_server, officer)
    page.goto(live_server.url + reverse("admin:audit_reviewcase_changelist"))
    assert page.evaluate("document.querySelector('.review-snippet mark').textContent") == "内部价格"
    click(page, f'input[name="_selected_action"][value="{case.pk}"]')
    page.evaluate("document.querySelector('select[name=action]').value = 'decide_dismiss'")
    clicking_away(page, 'button[name="index"]')
    case.refresh_from_db()
    assert (case.status, case.decision, case.decided_by) == (
        ReviewCase.Status.DECIDED,
        ReviewCase.Decision.DISMISSED,
        officer,
    )

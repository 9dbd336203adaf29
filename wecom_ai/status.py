"""The admin's status page: is everything this product needs running, and which version?

It replaces the admin's "View site" link (there is no public site, so that link led to a
404). Each check catches its own failure, so one broken component still shows the others.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from importlib import metadata

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

logger = logging.getLogger(__name__)

WORKER_PING_SECONDS = 1.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _database() -> Check:
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            version = cursor.fetchone()[0]
    except Exception:  # shown as down; the reason goes to the log, not the page
        logger.exception("status: database check failed")
        return Check(str(_("Database")), False, gettext("not reachable"))
    return Check(str(_("Database")), True, f"PostgreSQL {version}")


def _redis() -> Check:
    import redis

    try:
        client = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
        version = client.info("server")["redis_version"]
    except Exception:
        logger.exception("status: Redis check failed")
        return Check("Redis", False, gettext("not reachable"))
    return Check("Redis", True, f"Redis {version}")


def _workers() -> Check:
    from wecom_ai.celery import app

    try:
        replies = app.control.ping(timeout=WORKER_PING_SECONDS)
    except Exception:
        logger.exception("status: worker ping failed")
        return Check(str(_("Workers")), False, gettext("the broker is not reachable"))
    names = sorted(name for reply in replies for name in reply)
    if not names:
        return Check(str(_("Workers")), False, gettext("no worker answered"))
    return Check(str(_("Workers")), True, ", ".join(names))


def _models() -> list[Check]:
    from apps.inference.model_load import model_load_get
    from apps.inference.models import ModelProfile

    checks = []
    for profile in ModelProfile.objects.order_by("name"):
        load = model_load_get(profile_id=profile.pk)
        if load is None:
            checks.append(Check(profile.name, False, gettext("not loaded by any inference worker")))
        else:
            detail = gettext("loaded by %(workers)s workers, %(slots)s slots") % {
                "workers": load.workers,
                "slots": load.slots,
            }
            checks.append(Check(profile.name, True, detail))
    return checks


def _versions() -> list[tuple[str, str]]:
    def version_of(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "—"

    return [
        (str(_("Version")), settings.APP_VERSION),
        ("Python", platform.python_version()),
        ("Django", version_of("django")),
        ("llama-cpp-python", version_of("llama-cpp-python")),
    ]


def status_view(request: HttpRequest) -> HttpResponse:
    """Staff only (wrapped in `admin_view`); shows no secrets, only what is up."""
    context = {
        **admin.site.each_context(request),
        "title": _("Status"),
        "services": [_database(), _redis(), _workers()],
        "models": _models(),
        "versions": _versions(),
    }
    return TemplateResponse(request, "admin/status.html", context)

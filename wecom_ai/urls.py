import logging

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.utils.translation import gettext_lazy as _
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from apps.monitoring.dashboard import home_view
from apps.monitoring.views import metrics_view
from wecom_ai import schema  # noqa: F401 - registers the doors' authentication schemes
from wecom_ai.status import status_view

# There is no public site: the header names the product, and "View site" (a 404) is replaced
# by the status page (templates/admin/base_site.html).
admin.site.site_header = _("WeCom AI")
admin.site.site_title = _("WeCom AI")
admin.site.index_title = _("Administration")
admin.site.site_url = None


def healthz(request: HttpRequest) -> HttpResponse:
    """A plain page for load balancers (and the callback benchmark's baseline)."""
    return HttpResponse("ok", content_type="text/plain")


def readyz(request: HttpRequest) -> HttpResponse:
    """Ready only when the database and Redis answer; for orchestrators' readiness probes."""
    from django.core.cache import cache
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        cache.get("readyz")
    except Exception:  # any failure means not ready; details go to the log, not the caller
        logging.getLogger(__name__).exception("readiness check failed")
        return HttpResponse("not ready", status=503, content_type="text/plain")
    return HttpResponse("ready", content_type="text/plain")


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("wecom/", include("apps.bots.urls")),
    path("wecom/", include("apps.wecomapp.urls")),
    path("wechat/", include("apps.wechat.urls")),
    path("api/mp/", include("apps.wechat.api_urls")),
    path("api/", include("apps.knowledge.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("v1/", include("apps.openai_api.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/status/", admin.site.admin_view(status_view), name="admin-status"),
    # The admin's home page: the dashboard for those who may see it, else Django's index.
    path("admin/", admin.site.admin_view(home_view), name="admin-home"),
    path("admin/", admin.site.urls),
]

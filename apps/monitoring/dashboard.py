"""The operations dashboard: the admin's home page for those who may see it.

Everyone else gets Django's usual index. Figures come from `selectors.dashboard_data`
(hourly summaries), rendered into the page as JSON for Chart.js, served from `static/`.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from apps.bots.models import Bot, Turn
from apps.monitoring.selectors import PERIODS, DashboardQuery, dashboard_bots, dashboard_data


class DashboardFilters(forms.Form):
    period = forms.ChoiceField(
        label=_("period"),
        choices=[("24h", _("last 24 hours")), ("7d", _("last 7 days")), ("30d", _("last 30 days"))],
        required=False,
    )
    bot = forms.ModelChoiceField(
        label=_("bot"), queryset=Bot.objects.none(), required=False, empty_label=_("all bots")
    )
    channel = forms.ChoiceField(
        label=_("channel"),
        choices=[("", _("all channels")), *Turn.Channel.choices],
        required=False,
    )

    def __init__(self, *args: object, bots: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["bot"].queryset = bots  # type: ignore[attr-defined]


def home_view(request: HttpRequest) -> HttpResponse:
    """Staff only (wrapped in `admin_view`); the dashboard needs `monitoring.view_dashboard`."""
    if not request.user.has_perm("monitoring.view_dashboard"):
        return admin.site.index(request)
    bots = dashboard_bots(request.user)
    filters = DashboardFilters(request.GET or None, bots=bots)
    chosen = filters.cleaned_data if filters.is_valid() else {}
    end = timezone.now()
    period = chosen.get("period") or "24h"
    bot = chosen.get("bot")
    query = DashboardQuery(
        start=end - PERIODS[period],
        end=end,
        bot_ids=(bot.pk,) if bot else tuple(bots.values_list("pk", flat=True)),
        channel=chosen.get("channel") or "",
    )
    context = {
        **admin.site.each_context(request),
        # The home page keeps the admin index's title; the dashboard is its first section.
        "title": admin.site.index_title,
        "filters": filters,
        "dashboard": dashboard_data(query),
        "chart_labels": {
            "questions": gettext("questions"),
            "users": gettext("active users"),
            "total_p95": gettext("answer time p95"),
            "first_token_p95": gettext("first token p95"),
            "failed": gettext("failed"),
            "rejected": gettext("refused questions"),
            "load": gettext("answers decoding at once"),
            "queue_wait_p95": gettext("queue wait p95 (s)"),
        },
        "app_list": admin.site.get_app_list(request),
    }
    return TemplateResponse(request, "admin/monitoring/dashboard.html", context)

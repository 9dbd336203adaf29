"""Delivery health on the bot list and page: is WeCom reaching the bot, are answers leaving?"""

from __future__ import annotations

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from apps.bots.models import Bot
from apps.bots.selectors import DeliveryHealth, bots_delivery_health


def _ago(moment: object) -> str:
    if moment is None:
        return _("not in the last 24 hours")
    return _("%(time)s ago") % {"time": timesince(moment, timezone.now())}  # type: ignore[arg-type]


class DeliveryHealthAdminMixin:
    @admin.display(description=gettext_lazy("delivery (24 h)"))
    def delivery_health(self, obj: Bot) -> str:
        health = bots_delivery_health().get(obj.pk, DeliveryHealth())
        problems = health.response_url_failures + health.failed
        return format_html(
            '<span class="delivery-health {}">{}</span>',
            "delivery-problem" if problems else "delivery-ok",
            _("last answer %(ago)s · %(failed)s failed · %(url)s response_url failures")
            % {
                "ago": _ago(health.last_answer_at),
                "failed": health.failed,
                "url": health.response_url_failures,
            },
        )

    @admin.display(description=gettext_lazy("delivery health"))
    def delivery_health_detail(self, obj: Bot) -> str:
        if not obj.pk:
            return "—"
        health = bots_delivery_health().get(obj.pk, DeliveryHealth())
        verified = (
            (_ago(obj.url_verified_at) if obj.url_verified_at else _("never"))
            if not obj.uses_long_connection
            else _("not used (long connection)")
        )
        rows = [
            (_("callback URL verified by WeCom"), verified),
            (_("last question received"), _ago(health.last_question_at)),
            (_("last answer delivered"), _ago(health.last_answer_at)),
            (
                _("answers sent by response_url after the stream window (24 h)"),
                health.stream_expiries,
            ),
            (_("response_url deliveries that failed (24 h)"), health.response_url_failures),
            (_("turns that failed (24 h)"), health.failed),
        ]
        return format_html(
            '<table class="delivery-health-detail">{}</table>',
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
        )

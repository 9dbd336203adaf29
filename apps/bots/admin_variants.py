"""A/B variants on the bot's admin page: the inline that sets them up, the page comparing
them with the control, and promoting the winner.

The comparison page and the promotion are scoped like the bot's own page: a user who may
not view the bot gets 403, and only those who may change it promote a variant.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.forms.formsets import INITIAL_FORM_COUNT, TOTAL_FORM_COUNT
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_POST

from apps.audit.admin.mixins import request_id_of
from apps.bots.models import Bot
from apps.bots.services.variants import bot_variants_save, variant_promote
from apps.bots.variant_comparison import variants_compare
from apps.bots.variants import BUCKETS, WEIGHTS_OVER, BotVariant

# The periods the comparison page offers, in days; the first is the default.
PERIOD_DAYS = (7, 1, 30, 90)


class BotVariantFormSet(forms.BaseInlineFormSet):
    def __init__(self, data: Any = None, *args: Any, prefix: str | None = None, **kwargs: Any):
        name = f"{prefix or self.get_default_prefix()}-{TOTAL_FORM_COUNT}"
        if data is not None and name not in data:
            # A bot form posted without the variants (a script or test written before them)
            # saves the bot and leaves its variants as they are, instead of failing.
            data = data.copy()
            data[name] = data[name.replace(TOTAL_FORM_COUNT, INITIAL_FORM_COUNT)] = "0"
        super().__init__(data, *args, prefix=prefix, **kwargs)

    def clean(self) -> None:
        super().clean()
        total = 0
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or data.get("DELETE") or not data.get("enabled"):
                continue
            total += data.get("weight") or 0
        if total > BUCKETS:
            raise ValidationError(WEIGHTS_OVER)


class BotVariantInline(admin.TabularInline):
    model = BotVariant
    formset = BotVariantFormSet
    extra = 0
    fields = ("name", "weight", "model_profile", "system_prompt", "enabled")
    autocomplete_fields = ("model_profile",)
    formfield_overrides = {models.TextField: {"widget": forms.Textarea(attrs={"rows": 3})}}
    verbose_name_plural = _(
        "A/B variants (the users no enabled variant takes get the settings above)"
    )


def _period_choices() -> list[tuple[int, str]]:
    return [
        (days, ngettext("last %(days)s day", "last %(days)s days", days) % {"days": days})
        for days in PERIOD_DAYS
    ]


class PeriodForm(forms.Form):
    days = forms.TypedChoiceField(
        label=_("Period"), coerce=int, choices=_period_choices, required=False
    )


class BotVariantAdminMixin(admin.ModelAdmin):
    inlines = (BotVariantInline,)

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:object_id>/variants/",
                self.admin_site.admin_view(self.variants_view),
                name="bots_bot_variants",
            ),
            path(
                "<int:object_id>/variants/<int:variant_id>/promote/",
                self.admin_site.admin_view(require_POST(self.variant_promote_view)),
                name="bots_bot_variant_promote",
            ),
        ]
        return own + super().get_urls()

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not BotVariant:
            super().save_formset(request, form, formset, change)
            return
        bot_variants_save(
            bot=form.instance,
            save=lambda: super(BotVariantAdminMixin, self).save_formset(
                request, form, formset, change
            ),
            actor=request.user,
            request_id=request_id_of(request),
        )

    def _variants_bot(self, request: HttpRequest, object_id: int) -> Bot:
        bot = Bot.objects.filter(pk=object_id).first()
        if bot is None:
            raise Http404
        if not self.has_view_or_change_permission(request, bot):
            raise PermissionDenied
        return bot

    def variants_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        bot = self._variants_bot(request, object_id)
        period = PeriodForm(request.GET or None)
        days = (period.is_valid() and period.cleaned_data["days"]) or PERIOD_DAYS[0]
        until = timezone.now()
        since = until - timedelta(days=days)
        turns_url = reverse(f"{self.admin_site.name}:bots_turn_changelist")
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("A/B variants of %(bot)s") % {"bot": bot},
            "opts": self.model._meta,
            "original": bot,
            "bot": bot,
            "period": period if period.is_bound else PeriodForm(initial={"days": days}),
            "since": since,
            "until": until,
            "figures": variants_compare(bot=bot, since=since, until=until),
            "turns_url": f"{turns_url}?bot__id__exact={bot.pk}&is_test__exact=0",
            "can_promote": self.has_change_permission(request, bot),
        }
        return TemplateResponse(request, "admin/bots/bot/variants.html", context)

    def variant_promote_view(
        self, request: HttpRequest, object_id: int, variant_id: int
    ) -> HttpResponse:
        bot = self._variants_bot(request, object_id)
        if not self.has_change_permission(request, bot):
            raise PermissionDenied
        variant = BotVariant.objects.filter(pk=variant_id, bot=bot).first()
        if variant is None:
            raise Http404
        variant_promote(variant=variant, actor=request.user, request_id=request_id_of(request))
        self.message_user(
            request,
            gettext("%(variant)s is now the bot's own setting; every variant is disabled.")
            % {"variant": variant.name},
            messages.SUCCESS,
        )
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:bots_bot_variants", args=[bot.pk])
        )

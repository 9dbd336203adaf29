"""API keys in the admin: created here (the key shown once), scoped to the bots one manages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from guardian.shortcuts import get_objects_for_user

from apps.audit.admin.mixins import OperatorAuditAdminMixin, request_id_of
from apps.audit.services.operator_audit import model_save_audited
from apps.bots.models import Bot
from apps.openai_api.models import KEY_MARKER, ApiKey
from apps.openai_api.services.keys import (
    API_KEY_ACTION,
    api_key_create,
    api_key_revoke,
    api_key_snapshot,
)


def bots_managed_by(*, user: Any) -> QuerySet[Bot]:
    """The bots `user` may change (the model permission, or guardian's on the bot)."""
    return get_objects_for_user(user, "change_bot", klass=Bot)


class RevokedFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("active", _("active")), ("revoked", _("revoked"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    audit_action_prefix = API_KEY_ACTION
    list_display = (
        "name",
        "key_prefix",
        "bot_list",
        "acts_as",
        "rate_limit_per_minute",
        "last_used_at",
        "revoked_at",
        "created_by",
    )
    list_filter = (RevokedFilter, "bots")
    search_fields = ("name", "prefix", "userid")
    list_select_related = ("created_by",)
    filter_horizontal = ("bots",)
    readonly_fields = ("key_prefix", "created_by", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def audit_snapshot(self, obj: Model | None) -> dict[str, Any] | None:
        return api_key_snapshot(obj)

    def get_fieldsets(self, request: HttpRequest, obj: Model | None = None) -> Any:
        fields: tuple[str, ...] = ("name", "bots", "userid", "rate_limit_per_minute")
        if obj is not None:
            fields = ("key_prefix", *fields)
        history = ("created_by", "created_at", "last_used_at", "revoked_at")
        return [(None, {"fields": fields}), (_("History"), {"fields": history})]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        """Keys whose every bot the user manages: a key reaching further is not theirs."""
        keys = super().get_queryset(request).prefetch_related("bots")
        if request.user.is_superuser:
            return keys
        others = Bot.objects.exclude(pk__in=bots_managed_by(user=request.user))
        return keys.exclude(bots__in=others)

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "bots":
            kwargs["queryset"] = bots_managed_by(user=request.user).order_by("name")
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @admin.display(description=_("key"), ordering="prefix")
    def key_prefix(self, obj: ApiKey) -> str:
        return f"{KEY_MARKER}{obj.prefix}…" if obj.prefix else "—"

    @admin.display(description=_("bots"))
    def bot_list(self, obj: ApiKey) -> str:
        return ", ".join(bot.slug for bot in obj.bots.all())

    @admin.display(description=_("acts as"), ordering="userid")
    def acts_as(self, obj: ApiKey) -> str:
        return obj.userid or str(_("external user"))

    def audit_save(
        self,
        request: HttpRequest,
        obj: Model,
        form: Any,
        change: bool,
        related: Callable[[], None],
    ) -> None:
        assert isinstance(obj, ApiKey)
        if change:
            model_save_audited(
                obj=obj,
                actor=request.user,
                action_prefix=API_KEY_ACTION,
                snapshot=api_key_snapshot,
                related=related,
                request_id=request_id_of(request),
            )
            return
        _key, raw = api_key_create(
            name=obj.name,
            bots=form.cleaned_data["bots"],
            actor=request.user,
            request_id=request_id_of(request),
            key=obj,
        )
        # Kept on the request only: the page after the save shows it once, nothing stores it.
        request._api_key_raw = raw  # type: ignore[attr-defined]

    def response_add(
        self, request: HttpRequest, obj: Model, post_url_continue: str | None = None
    ) -> HttpResponse:
        raw = getattr(request, "_api_key_raw", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": _("API key created"),
            "opts": self.model._meta,
            "key": obj,
            "raw_key": raw,
        }
        response = TemplateResponse(request, "admin/openai_api/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description=_("Revoke the selected API keys"), permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = sum(
            api_key_revoke(key=key, actor=request.user, request_id=request_id_of(request))
            for key in queryset
        )
        self.message_user(
            request,
            ngettext("%(count)d API key revoked.", "%(count)d API keys revoked.", revoked)
            % {"count": revoked},
            messages.SUCCESS,
        )

"""Policies and their sensitive word lists; every change is operator-audited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from apps.audit.admin.mixins import OperatorAuditAdminMixin, request_id_of
from apps.audit.forms import AuditPolicyForm, SensitiveWordListForm
from apps.audit.models import AuditPolicy, PolicyWordList, RegexRule, SensitiveWordList
from apps.audit.services.configuration import (
    policy_delete,
    policy_save,
    policy_snapshot,
    word_list_delete,
)
from apps.audit.services.policy import word_list_save, word_list_snapshot


@admin.register(SensitiveWordList)
class SensitiveWordListAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    form = SensitiveWordListForm
    audit_action_prefix = "audit.word_list"
    list_display = ("name", "word_count", "policy_names", "updated_at")
    search_fields = ("name", "description")
    readonly_fields = ("word_count", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "word_count")}),
        (_("Words"), {"fields": ("words", "import_file", "import_mode")}),
        (_("History"), {"fields": ("created_at", "updated_at")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[SensitiveWordList]:
        return super().get_queryset(request).prefetch_related("policies")

    @admin.display(description=_("policies"))
    def policy_names(self, obj: SensitiveWordList) -> str:
        return ", ".join(policy.name for policy in obj.policies.all()) or "—"

    def audit_snapshot(self, obj: Model | None) -> dict[str, Any] | None:
        return word_list_snapshot(obj)

    def audit_save(
        self,
        request: HttpRequest,
        obj: SensitiveWordList,
        form: Any,
        change: bool,
        related: Callable[[], None],
    ) -> None:
        # The policies using the list recompile when their updated_at moves.
        word_list_save(
            word_list=obj, actor=request.user, related=related, request_id=request_id_of(request)
        )

    def audit_delete(self, request: HttpRequest, obj: SensitiveWordList) -> None:
        word_list_delete(word_list=obj, actor=request.user, request_id=request_id_of(request))


class PolicyWordListInline(admin.TabularInline):
    model = PolicyWordList
    extra = 0
    autocomplete_fields = ("word_list",)
    verbose_name = _("word list")
    verbose_name_plural = _("sensitive word lists")


class RegexRuleInline(admin.TabularInline):
    model = RegexRule
    extra = 0
    fields = ("name", "pattern", "action")


@admin.register(AuditPolicy)
class AuditPolicyAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    form = AuditPolicyForm
    audit_action_prefix = "audit.policy"
    inlines = (PolicyWordListInline, RegexRuleInline)
    list_display = ("name", "enabled", "retention_days", "legal_hold", "pii_summary", "updated_at")
    list_filter = ("enabled", "legal_hold", "llm_review_enabled")
    search_fields = ("name", "description")
    filter_horizontal = ("bots", "archive_sources")
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "enabled")}),
        (
            _("Personal data"),
            {
                "fields": ("pii_resident_id", "pii_mobile", "pii_bank_card", "pii_email"),
                "description": _(
                    "Detectors check checksums and dates, so order numbers are not flagged."
                ),
            },
        ),
        (_("Regex rules import"), {"fields": ("regex_import_file", "regex_import_action")}),
        (_("Refusal"), {"fields": ("refusal_message",)}),
        (_("Retention"), {"fields": ("retention_days", "legal_hold", "legal_hold_reason")}),
        (
            _("LLM review"),
            {
                "fields": (
                    "llm_review_enabled",
                    "llm_review_prompt",
                    "llm_review_model",
                    "llm_review_threshold",
                ),
                "classes": ("collapse",),
            },
        ),
        (_("Applies to"), {"fields": ("bots", "archive_sources")}),
        (_("History"), {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description=_("personal data"))
    def pii_summary(self, obj: AuditPolicy) -> str:
        return ", ".join(f"{kind}: {action}" for kind, action in obj.pii_actions().items()) or "—"

    def audit_snapshot(self, obj: Model | None) -> dict[str, Any] | None:
        return policy_snapshot(obj)

    def audit_save(
        self,
        request: HttpRequest,
        obj: AuditPolicy,
        form: Any,
        change: bool,
        related: Callable[[], None],
    ) -> None:
        policy_save(
            policy=obj,
            actor=request.user,
            related=related,
            regex_import=form.cleaned_data.get("regex_import_file") or "",
            regex_import_action=form.cleaned_data.get("regex_import_action") or "flag",
            request_id=request_id_of(request),
        )

    def audit_delete(self, request: HttpRequest, obj: AuditPolicy) -> None:
        policy_delete(policy=obj, actor=request.user, request_id=request_id_of(request))

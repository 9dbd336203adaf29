"""Policies and their sensitive word lists; every change is operator-audited."""

from __future__ import annotations

import hashlib
from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.audit.admin.mixins import OperatorAuditAdminMixin, request_id_of
from apps.audit.forms import AuditPolicyForm, SensitiveWordListForm
from apps.audit.models import AuditPolicy, PolicyWordList, RegexRule, SensitiveWordList
from apps.audit.services.operator_audit import model_snapshot
from apps.audit.services.policy import regex_rules_import


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

    def audit_snapshot(self, obj: Model) -> dict[str, Any] | None:
        snapshot = model_snapshot(obj)
        if snapshot is not None:
            # Thousands of words: keep a count and a fingerprint rather than the full text.
            words = snapshot.pop("words", "")
            snapshot["words_sha256"] = hashlib.sha256(words.encode()).hexdigest()
        return snapshot

    def save_model(
        self, request: HttpRequest, obj: SensitiveWordList, form: Any, change: bool
    ) -> None:
        super().save_model(request, obj, form, change)
        # Policies using the list recompile when their updated_at moves.
        AuditPolicy.objects.filter(word_list_rules__word_list=obj).update(updated_at=timezone.now())


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

    def audit_snapshot(self, obj: Model) -> dict[str, Any] | None:
        snapshot = model_snapshot(obj)
        if snapshot is not None and obj.pk is not None:
            snapshot["word_list_rules"] = [
                {"word_list": rule.word_list_id, "action": rule.action}
                for rule in PolicyWordList.objects.filter(policy=obj).order_by("word_list_id")
            ]
            snapshot["regex_rules"] = [
                {"pattern": rule.pattern, "action": rule.action}
                for rule in RegexRule.objects.filter(policy=obj).order_by("id")
            ]
        return snapshot

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        text = form.cleaned_data.get("regex_import_file")
        if text:
            # Before the audit entry, so the entry's "after" includes the imported rules.
            admin.ModelAdmin.save_related(self, request, form, formsets, change)
            regex_rules_import(
                policy=form.instance,
                text=text,
                default_action=form.cleaned_data["regex_import_action"],
                actor=request.user,
                request_id=request_id_of(request),
            )
            formsets = []
        super().save_related(request, form, formsets, change)

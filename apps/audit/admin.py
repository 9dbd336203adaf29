"""Compliance admin: policies, review cases, the archive, and read-only audit records.

Officers see only cases and archived messages of the bots and archive sources assigned to
them (guardian object permissions, see `apps.audit.selectors`); anything else answers 404.
Opening a case or a transcript asks for a reason first and writes an access-log row.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group, Permission, User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Model, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from apps.audit import selectors
from apps.audit.models import (
    AccessLog,
    ArchivedMessage,
    ArchiveKey,
    ArchiveQuarantine,
    ArchiveSource,
    AuditPolicy,
    LedgerCheckpoint,
    LedgerEntry,
    OperatorAuditEntry,
    PolicyWordList,
    RegexRule,
    ReviewCase,
    SensitiveWordList,
)
from apps.audit.services.access import access_log_record, access_log_record_many
from apps.audit.services.archive import archive_key_fingerprint
from apps.audit.services.export import export_write, export_zip
from apps.audit.services.operator_audit import model_snapshot, operator_audit_record
from apps.audit.services.policy import (
    PolicyImportError,
    decode_import_file,
    regex_rules_import,
    regex_rules_parse,
    word_lines_check,
)
from apps.audit.services.review import (
    ReviewError,
    review_assign,
    review_decide,
    review_scope,
    review_scope_set,
)
from apps.bots.fields import is_undecryptable
from apps.bots.models import Bot


def _request_id(request: HttpRequest) -> str:
    return getattr(request, "request_id", "")


def _short(text: str, length: int = 60) -> str:
    return text if len(text) <= length else text[:length] + "…"


# --- mixins -----------------------------------------------------------------------------------


class ReadOnlyAdminMixin:
    """Audit records are evidence: nobody adds, edits or deletes them in the admin."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class OperatorAuditAdminMixin:
    """Record every add, change (including many-to-many and inlines) and delete.

    The entry is written in `save_related`, after many-to-many fields and inlines are saved,
    inside the admin's transaction, with the state before and after the change.
    `audit_action_prefix` names the action (`audit.policy` → `audit.policy.update`).
    """

    audit_action_prefix = ""

    def audit_prefix(self) -> str:
        meta = self.model._meta  # type: ignore[attr-defined]
        return self.audit_action_prefix or f"{meta.app_label}.{meta.model_name}"

    def audit_snapshot(self, obj: Model) -> dict[str, Any] | None:
        return model_snapshot(obj)

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        before = None
        if change and obj.pk is not None:
            stored = type(obj)._default_manager.filter(pk=obj.pk).first()
            before = self.audit_snapshot(stored) if stored is not None else None
        request._audit_before = before  # type: ignore[attr-defined]
        super().save_model(request, obj, form, change)  # type: ignore[misc]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)  # type: ignore[misc]
        obj = form.instance
        operator_audit_record(
            actor=request.user,
            action=f"{self.audit_prefix()}.{'update' if change else 'create'}",
            obj=obj,
            before=getattr(request, "_audit_before", None),
            after=self.audit_snapshot(obj),
            request_id=_request_id(request),
        )

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        with transaction.atomic():
            operator_audit_record(
                actor=request.user,
                action=f"{self.audit_prefix()}.delete",
                obj=obj,
                before=self.audit_snapshot(obj),
                request_id=_request_id(request),
            )
            super().delete_model(request, obj)  # type: ignore[misc]

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        with transaction.atomic():
            for obj in queryset:
                operator_audit_record(
                    actor=request.user,
                    action=f"{self.audit_prefix()}.delete",
                    obj=obj,
                    before=self.audit_snapshot(obj),
                    request_id=_request_id(request),
                )
            super().delete_queryset(request, queryset)  # type: ignore[misc]


class AccessReasonForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"),
        min_length=5,
        max_length=500,
        widget=forms.TextInput(attrs={"size": 80, "autofocus": True}),
        help_text=_("e.g. the case, ticket or request this access is for."),
    )


# The hidden field that tells a reason POST from the change form's own POST.
ACCESS_REASON_FIELD = "_access_reason"
# One-shot grants: a reason POST leaves one for its page, the redirected GET spends it.
_REASON_GRANTS = "audit.access_reason_grants"
_REASON_GRANT_SECONDS = 120


def _reason_grant_store(request: HttpRequest, path: str, reason: str) -> None:
    now = timezone.now().timestamp()
    grants = {
        key: grant
        for key, grant in request.session.get(_REASON_GRANTS, {}).items()
        if now - grant["at"] < _REASON_GRANT_SECONDS
    }
    grants[path] = {"reason": reason, "at": now}
    request.session[_REASON_GRANTS] = grants


def _reason_grant_pop(request: HttpRequest, path: str) -> str | None:
    grants = request.session.get(_REASON_GRANTS, {})
    grant = grants.pop(path, None)
    if grant is None:
        return None
    request.session[_REASON_GRANTS] = grants
    if timezone.now().timestamp() - grant["at"] >= _REASON_GRANT_SECONDS:
        return None
    return grant["reason"]


class AccessReasonAdminMixin:
    """Scope to what the user may see (others: 404) and ask why before showing a record.

    Every page that shows the record (change and history views, whatever the HTTP method)
    asks first. The reason is POSTed with CSRF (never a GET parameter that lands in proxy
    logs and browser history); the POST redirects to the page, which spends the one-shot
    grant and logs the record and every other record it shows. A change POST (a review
    decision) needs a reason given for the record within `ACCESS_REASON_REUSE`.
    """

    access_reason_template = "admin/audit/access_reason.html"

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None):
        obj = super().get_object(request, object_id, from_field)  # type: ignore[misc]
        if obj is None:
            raise Http404(_("No such record, or it is not assigned to you."))
        return obj

    def access_reason_required(self, request: HttpRequest) -> bool:
        return True

    def access_reason_default(self, request: HttpRequest) -> str:
        """The reason logged when none is asked (see `access_reason_required`)."""
        return ""

    def access_shown_with(self, request: HttpRequest, obj: Model) -> list[Model]:
        """Other records the page shows with `obj`; each is logged under the same reason."""
        return []

    def _access_gate(self, request: HttpRequest, object_id: str) -> HttpResponse | None:
        """A response asking for the reason, or None once the access is logged."""
        obj = self.get_object(request, unquote(object_id))
        if not self.has_view_or_change_permission(request, obj):  # type: ignore[attr-defined]
            raise PermissionDenied
        if request.method == "POST" and ACCESS_REASON_FIELD in request.POST:
            form = AccessReasonForm(request.POST)
            if not form.is_valid():
                return self._access_reason_form(request, obj, form)
            _reason_grant_store(request, request.path, form.cleaned_data["reason"])
            return HttpResponseRedirect(request.get_full_path())
        if request.method == "POST":
            if selectors.access_reason_recent(user=request.user, obj=obj) is None:
                raise PermissionDenied
            return None
        reason = _reason_grant_pop(request, request.path)
        if reason is None and not self.access_reason_required(request):
            reason = self.access_reason_default(request)
        if not reason:
            return self._access_reason_form(request, obj, AccessReasonForm())
        with transaction.atomic():
            access_log_record(
                user=request.user,
                obj=obj,
                action=AccessLog.Action.VIEW,
                reason=reason,
                request_id=_request_id(request),
            )
            access_log_record_many(
                user=request.user,
                objects=self.access_shown_with(request, obj),
                action=AccessLog.Action.VIEW,
                reason=reason,
                request_id=_request_id(request),
            )
        return None

    def _access_reason_form(
        self, request: HttpRequest, obj: Model, form: AccessReasonForm
    ) -> HttpResponse:
        return TemplateResponse(
            request,
            self.access_reason_template,
            {
                **self.admin_site.each_context(request),  # type: ignore[attr-defined]
                "title": _("Why are you opening this record?"),
                "form": form,
                "object": obj,
                "opts": self.model._meta,  # type: ignore[attr-defined]
                "reason_field": ACCESS_REASON_FIELD,
            },
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        return self._access_gate(request, object_id) or super().change_view(  # type: ignore[misc]
            request, object_id, form_url, extra_context
        )

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return self._access_gate(request, object_id) or super().history_view(  # type: ignore[misc]
            request, object_id, extra_context
        )


# Exports of up to this many records list their ids in the manifest's filters.
_MANIFEST_IDS = 1000


class ExportReasonForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), min_length=5, max_length=500)


def _export_action(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet, *, kind: str
) -> HttpResponse:
    """Ask for a reason, then answer a zip of the JSONL file and its manifest."""
    form = ExportReasonForm(request.POST if "reason" in request.POST else None)
    if not form.is_valid():
        return TemplateResponse(
            request,
            "admin/audit/export_reason.html",
            {
                **modeladmin.admin_site.each_context(request),
                "title": _("Export selected records"),
                "form": form,
                "queryset": queryset,
                "count": queryset.count(),
                "opts": modeladmin.model._meta,
                "action": request.POST.get("action", ""),
                "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"),
            },
        )
    ids = list(queryset.order_by("pk").values_list("pk", flat=True)[: _MANIFEST_IDS + 1])
    filters: dict[str, Any] = {"changelist_query": request.GET.urlencode()}
    if len(ids) <= _MANIFEST_IDS:
        filters["ids"] = ids
    with tempfile.TemporaryDirectory(prefix="audit-export-") as directory:
        result = export_write(
            kind=kind,
            queryset=queryset,
            user=request.user,
            reason=form.cleaned_data["reason"],
            directory=Path(directory),
            filters=filters,
            request_id=_request_id(request),
        )
        content = export_zip(result)
    response = HttpResponse(content, content_type="application/zip")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="audit-{kind}-{stamp}.zip"'
    return response


# --- policies ---------------------------------------------------------------------------------


class SensitiveWordListForm(forms.ModelForm):
    import_file = forms.FileField(
        label=_("import from file"),
        required=False,
        help_text=_("A UTF-8 or GB18030 text file, one word per line."),
    )
    import_mode = forms.ChoiceField(
        label=_("import mode"),
        choices=[("replace", _("replace the words")), ("append", _("add to the words"))],
        initial="replace",
    )

    class Meta:
        model = SensitiveWordList
        fields = ("name", "description", "words")
        widgets = {"words": forms.Textarea(attrs={"rows": 20, "cols": 60})}

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        upload = data.get("import_file")
        if upload:
            try:
                text = decode_import_file(upload.read())
            except PolicyImportError as exc:
                raise forms.ValidationError(exc.problems) from None
            words = data.get("words") or ""
            if data.get("import_mode") == "append" and words.strip():
                data["words"] = words.rstrip("\n") + "\n" + text
            else:
                data["words"] = text
            self.instance.words = data["words"]
        problems = word_lines_check(data.get("words") or "")
        if problems:
            self.add_error("words" if not upload else "import_file", problems[:20])
        return data


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


class AuditPolicyForm(forms.ModelForm):
    regex_import_file = forms.FileField(
        label=_("import regex rules"),
        required=False,
        help_text=_(
            "One pattern per line, optionally 'action<TAB>pattern' (allow, flag, mask, block); "
            "added to the rules above. A file with an invalid pattern is refused as a whole."
        ),
    )
    regex_import_action = forms.ChoiceField(
        label=_("action for imported rules"),
        choices=RegexRule._meta.get_field("action").choices,
        initial="flag",
    )

    class Meta:
        model = AuditPolicy
        fields = (
            "name",
            "description",
            "enabled",
            "pii_resident_id",
            "pii_mobile",
            "pii_bank_card",
            "pii_email",
            "refusal_message",
            "retention_days",
            "legal_hold",
            "legal_hold_reason",
            "llm_review_enabled",
            "llm_review_prompt",
            "llm_review_model",
            "llm_review_threshold",
            "bots",
            "archive_sources",
        )

    def clean_regex_import_file(self) -> str:
        upload = self.cleaned_data.get("regex_import_file")
        if not upload:
            return ""
        try:
            text = decode_import_file(upload.read())
            regex_rules_parse(text, default_action="flag")
        except PolicyImportError as exc:
            raise forms.ValidationError(exc.problems[:20]) from None
        return text


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
                request_id=_request_id(request),
            )
            formsets = []
        super().save_related(request, form, formsets, change)


# --- review -----------------------------------------------------------------------------------


def _highlight(text: str, matches: list[dict[str, Any]]) -> str:
    """The text with matched spans in <mark>, escaped."""
    spans = sorted(
        {(m["start"], m["end"]) for m in matches if 0 <= m["start"] < m["end"] <= len(text)}
    )
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    parts, position = [], 0
    for start, end in merged:
        parts.append(("{}", (text[position:start],)))
        parts.append(("<mark>{}</mark>", (text[start:end],)))
        position = end
    parts.append(("{}", (text[position:],)))
    return format_html(
        '<div style="white-space: pre-wrap">{}</div>',
        format_html_join("", "{}", ((format_html(fmt, *args),) for fmt, args in parts)),
    )


class ReviewCaseForm(forms.ModelForm):
    class Meta:
        model = ReviewCase
        fields = ("decision", "note")

    def clean_decision(self) -> str:
        decision = self.cleaned_data.get("decision")
        if not decision:
            raise forms.ValidationError(_("Choose a decision."))
        return decision


class ReviewScopeForm(forms.Form):
    officer = forms.ModelChoiceField(
        label=_("officer"), queryset=get_user_model().objects.filter(is_staff=True, is_active=True)
    )
    bots = forms.ModelMultipleChoiceField(
        label=_("bots"), queryset=Bot.objects.all(), required=False
    )
    archive_sources = forms.ModelMultipleChoiceField(
        label=_("archive sources"), queryset=ArchiveSource.objects.all(), required=False
    )


class ReviewBotFilter(admin.SimpleListFilter):
    """Only the bots the officer is assigned to appear as choices."""

    title = _("bot")
    parameter_name = "bot"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(b.pk, b.name) for b in selectors.bots_reviewable_by(user=request.user)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(bot_id=self.value()) if self.value() else queryset


class ReviewDepartmentFilter(admin.SimpleListFilter):
    """Cases about people of one department (the asking employee or the archived sender)."""

    title = _("department")
    parameter_name = "department"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT unnest(departments) AS d FROM knowledge_directoryuser ORDER BY d"
            )
            return [(row[0], row[0]) for row in cursor.fetchall()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        from apps.knowledge.models import DirectoryUser

        people = DirectoryUser.objects.filter(departments__contains=[self.value()]).values("userid")
        return queryset.filter(
            Q(turn__conversation__userid__in=people) | Q(archived_message__sender__in=people)
        )


class ArchiveSourceScopeFilter(admin.SimpleListFilter):
    """Only the sources the officer is assigned to appear as choices."""

    title = _("archive source")
    parameter_name = "source"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list:
        return [(s.pk, s.name) for s in selectors.sources_reviewable_by(user=request.user)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(source_id=self.value()) if self.value() else queryset


class ReviewSourceFilter(ArchiveSourceScopeFilter):
    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        return queryset.filter(archive_source_id=self.value()) if self.value() else queryset


@admin.register(ReviewCase)
class ReviewCaseAdmin(AccessReasonAdminMixin, admin.ModelAdmin):
    form = ReviewCaseForm
    list_display = (
        "id",
        "created_at",
        "status",
        "action",
        "policy",
        "scope",
        "assignee",
        "decision",
    )
    list_display_links = ("id", "created_at")
    list_filter = (
        "status",
        "action",
        "decision",
        "policy",
        ReviewBotFilter,
        ReviewSourceFilter,
        ReviewDepartmentFilter,
    )
    list_select_related = ("policy", "bot", "archive_source", "assignee")
    search_fields = ("note", "turn__msgid", "archived_message__msgid")
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ("assign_to_me", "decide_dismiss", "decide_confirm", "export_selected")
    fieldsets = (
        (
            None,
            {"fields": ("status", "action", "policy", "scope", "created_at", "assignee")},
        ),
        (_("Content"), {"fields": ("source_content", "matched_rules")}),
        (_("Decision"), {"fields": ("decision", "note", "decided_by", "decided_at")}),
    )
    readonly_fields = (
        "status",
        "action",
        "policy",
        "scope",
        "created_at",
        "assignee",
        "source_content",
        "matched_rules",
        "decided_by",
        "decided_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[ReviewCase]:
        return selectors.review_cases_for_user(user=request.user).select_related(
            "policy",
            "bot",
            "archive_source",
            "assignee",
            "decided_by",
            "turn__conversation",
            "archived_message",
        )

    def access_shown_with(self, request: HttpRequest, obj: Model) -> list[Model]:
        # The page shows the flagged turn or archived message in full.
        return [record for record in (obj.turn, obj.archived_message) if record is not None]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: ReviewCase | None = None) -> bool:
        if obj is not None and obj.status != ReviewCase.Status.OPEN:
            return False
        return self.has_decide_permission(request)

    def has_decide_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.decide_reviewcase")

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.export_reviewcase")

    @admin.display(description=_("bot / archive source"))
    def scope(self, obj: ReviewCase) -> str:
        return str(obj.bot or obj.archive_source or "—")

    @admin.display(description=_("content"))
    def source_content(self, obj: ReviewCase) -> str:
        matches = obj.matches or []
        if obj.turn is not None:
            turn = obj.turn
            return format_html(
                "<p><b>{}</b> {} · {}</p><p><b>{}</b></p>{}<p><b>{}</b></p>{}",
                _("User"),
                turn.conversation.userid,
                turn.received_at,
                _("Question"),
                _highlight(turn.question, [m for m in matches if m.get("in") == "question"]),
                _("Answer"),
                _highlight(turn.answer, [m for m in matches if m.get("in") == "answer"]),
            )
        if obj.archived_message is not None:
            message = obj.archived_message
            return format_html(
                "<p><b>{}</b> {} → {} · {}</p>{}",
                _("From"),
                message.sender,
                ", ".join(message.tolist) or message.roomid,
                message.msgtime,
                _highlight(message.text, matches)
                if not message.purged_at
                else _("(purged by retention)"),
            )
        return "—"

    @admin.display(description=_("matched rules"))
    def matched_rules(self, obj: ReviewCase) -> str:
        return format_html_join(
            "",
            "<div>{} · {} · {}</div>",
            ((m.get("label"), m.get("action"), m.get("word") or "") for m in obj.matches or []),
        )

    def save_model(self, request: HttpRequest, obj: ReviewCase, form: Any, change: bool) -> None:
        try:
            review_decide(
                case=obj,
                user=request.user,
                decision=form.cleaned_data["decision"],
                note=form.cleaned_data.get("note", ""),
                request_id=_request_id(request),
            )
        except ReviewError as exc:
            raise PermissionDenied(str(exc)) from exc

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Nothing related is edited here; the decision was saved by the service."""

    def _decide(self, request: HttpRequest, queryset: QuerySet[ReviewCase], decision: str) -> None:
        decided = 0
        for case in queryset.filter(status=ReviewCase.Status.OPEN):
            review_decide(
                case=case, user=request.user, decision=decision, request_id=_request_id(request)
            )
            decided += 1
        self.message_user(request, _("%(count)d cases decided.") % {"count": decided})

    @admin.action(description=_("Assign to me"), permissions=["decide"])
    def assign_to_me(self, request: HttpRequest, queryset: QuerySet[ReviewCase]) -> None:
        cases = list(queryset.filter(status=ReviewCase.Status.OPEN))
        for case in cases:
            review_assign(
                case=case,
                assignee=request.user,
                actor=request.user,
                request_id=_request_id(request),
            )
        self.message_user(request, _("%(count)d cases assigned to you.") % {"count": len(cases)})

    @admin.action(description=_("Decide: no violation"), permissions=["decide"])
    def decide_dismiss(self, request: HttpRequest, queryset: QuerySet[ReviewCase]) -> None:
        self._decide(request, queryset, ReviewCase.Decision.DISMISSED)

    @admin.action(description=_("Decide: violation confirmed"), permissions=["decide"])
    def decide_confirm(self, request: HttpRequest, queryset: QuerySet[ReviewCase]) -> None:
        self._decide(request, queryset, ReviewCase.Decision.CONFIRMED)

    @admin.action(description=_("Export selected cases (JSONL + manifest)"), permissions=["export"])
    def export_selected(self, request: HttpRequest, queryset: QuerySet[ReviewCase]):
        return _export_action(self, request, queryset, kind="cases")

    # Officer assignments: which bots and archive sources each officer reviews.

    def get_urls(self) -> list:
        return [
            path(
                "scope/",
                self.admin_site.admin_view(self.scope_view),
                name="audit_reviewcase_scope",
            ),
            *super().get_urls(),
        ]

    def scope_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm("audit.assign_reviewcase"):
            raise PermissionDenied
        if request.method == "POST":
            form = ReviewScopeForm(request.POST)
            if form.is_valid():
                review_scope_set(
                    officer=form.cleaned_data["officer"],
                    bots=form.cleaned_data["bots"],
                    sources=form.cleaned_data["archive_sources"],
                    actor=request.user,
                    request_id=_request_id(request),
                )
                self.message_user(request, _("Assignments saved."), messages.SUCCESS)
                url = reverse("admin:audit_reviewcase_scope")
                return HttpResponseRedirect(f"{url}?officer={form.cleaned_data['officer'].pk}")
        else:
            initial: dict[str, Any] = {}
            officer_id = request.GET.get("officer")
            officer = get_user_model().objects.filter(pk=officer_id).first() if officer_id else None
            if officer is not None:
                scope = review_scope(officer=officer)
                initial = {
                    "officer": officer,
                    "bots": scope["bots"],
                    "archive_sources": scope["archive_sources"],
                }
            form = ReviewScopeForm(initial=initial)
        return TemplateResponse(
            request,
            "admin/audit/review_scope.html",
            {
                **self.admin_site.each_context(request),
                "title": _("Officer assignments"),
                "form": form,
                "opts": self.model._meta,
            },
        )


# --- archive ----------------------------------------------------------------------------------


class ArchiveSourceForm(forms.ModelForm):
    """The archive secret and proxy password are typed in, never shown again."""

    new_secret = forms.CharField(
        label=_("archive secret"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_("The Secret of the session archive app. Leave empty to keep it."),
    )
    new_proxy_password = forms.CharField(
        label=_("proxy password"),
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_("Leave empty to keep it."),
    )

    class Meta:
        model = ArchiveSource
        fields = (
            "name",
            "corp_id",
            "proxy",
            "timeout_seconds",
            "batch_size",
            "pull_interval_minutes",
            "enabled",
        )

    def clean_new_secret(self) -> str:
        value = self.cleaned_data["new_secret"]
        if not value and not self.instance.pk:
            raise forms.ValidationError(_("A new archive source needs its secret."))
        return value

    def save(self, commit: bool = True) -> ArchiveSource:
        source = super().save(commit=False)
        if self.cleaned_data.get("new_secret"):
            source.secret = self.cleaned_data["new_secret"]
        if self.cleaned_data.get("new_proxy_password"):
            source.proxy_password = self.cleaned_data["new_proxy_password"]
        if commit:
            source.save()
            self.save_m2m()
        return source


class ArchiveKeyForm(forms.ModelForm):
    """The private key is pasted once; the admin shows its public key fingerprint after."""

    new_private_key = forms.CharField(
        label=_("private key (PEM)"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60, "autocomplete": "off"}),
        help_text=_("Paste the RSA private key of this version. Leave empty to keep it."),
    )

    class Meta:
        model = ArchiveKey
        fields = ("publickey_ver",)

    def clean_new_private_key(self) -> str:
        value = self.cleaned_data["new_private_key"].strip()
        if not value:
            if not self.instance.pk:
                raise forms.ValidationError(_("A new key version needs its private key."))
            return value
        try:
            self.fingerprint = archive_key_fingerprint(value)
        except (ValueError, TypeError):
            raise forms.ValidationError(
                _("This is not an unencrypted RSA private key in PEM format.")
            ) from None
        return value + "\n"

    def save(self, commit: bool = True) -> ArchiveKey:
        key = super().save(commit=False)
        if self.cleaned_data.get("new_private_key"):
            key.private_key = self.cleaned_data["new_private_key"]
            key.fingerprint = self.fingerprint
        if commit:
            key.save()
        return key


class ArchiveKeyInline(admin.TabularInline):
    model = ArchiveKey
    form = ArchiveKeyForm
    extra = 0
    fields = ("publickey_ver", "new_private_key", "key_state", "fingerprint", "created_at")
    readonly_fields = ("key_state", "fingerprint", "created_at")

    @admin.display(description=_("stored key"))
    def key_state(self, obj: ArchiveKey) -> str:
        if not obj.pk:
            return "—"
        if is_undecryptable(obj.private_key):
            return str(_("cannot be decrypted: check FIELD_ENCRYPTION_KEYS"))
        return str(_("set")) if obj.private_key else str(_("missing"))


@admin.register(ArchiveSource)
class ArchiveSourceAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    """Configuration, not content: guarded by model permissions, not assignments.

    No object-permission pages here (guardian's): who reviews a source is set on the
    officer-assignment page only, through `review_scope_set`, which is audited.
    """

    form = ArchiveSourceForm
    audit_action_prefix = "audit.archive_source"
    inlines = (ArchiveKeyInline,)
    list_display = ("name", "corp_id", "enabled", "health", "cursor", "last_success_at")
    list_filter = ("enabled", "health")
    search_fields = ("name", "corp_id")
    actions = ("pull_now",)
    readonly_fields = (
        "secret_state",
        "cursor",
        "health",
        "status_message",
        "last_pull_at",
        "last_success_at",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "corp_id", "enabled")}),
        (
            _("Credentials"),
            {
                "fields": ("secret_state", "new_secret"),
                "description": _(
                    "Add the RSA private key of every public key version below; records "
                    "keep the version they were sealed with."
                ),
            },
        ),
        (
            _("SDK"),
            {
                "fields": ("proxy", "new_proxy_password", "timeout_seconds"),
                "description": _(
                    "The vendor library the archive workers load is set by the deployment "
                    "(ARCHIVE_SDK_LIBRARY), never here."
                ),
            },
        ),
        (_("Schedule"), {"fields": ("pull_interval_minutes", "batch_size")}),
        (
            _("Status"),
            {
                "fields": (
                    "cursor",
                    "health",
                    "status_message",
                    "last_pull_at",
                    "last_success_at",
                )
            },
        ),
        (_("History"), {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description=_("stored secret"))
    def secret_state(self, obj: ArchiveSource) -> str:
        if not obj.pk:
            return "—"
        if is_undecryptable(obj.secret):
            return str(_("cannot be decrypted: check FIELD_ENCRYPTION_KEYS or enter it again"))
        return str(_("set")) if obj.secret else str(_("missing"))

    def audit_snapshot(self, obj: Model) -> dict[str, Any] | None:
        snapshot = model_snapshot(obj)
        if snapshot is not None and obj.pk is not None:
            snapshot["keys"] = [
                {"publickey_ver": key.publickey_ver, "fingerprint": key.fingerprint}
                for key in ArchiveKey.objects.filter(source=obj).order_by("publickey_ver")
            ]
        return snapshot

    @admin.action(description=_("Pull now"), permissions=["change"])
    def pull_now(self, request: HttpRequest, queryset: QuerySet[ArchiveSource]) -> None:
        from apps.audit.tasks import archive_pull

        for source in queryset.filter(enabled=True):
            transaction.on_commit(lambda pk=source.pk: archive_pull.delay(pk))
        self.message_user(request, _("Pulls queued."))


@admin.register(ArchivedMessage)
class ArchivedMessageAdmin(AccessReasonAdminMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "msgtime",
        "sender",
        "recipients",
        "msgtype",
        "short_text",
        "policy_action",
        "recalled_at",
    )
    list_filter = (ArchiveSourceScopeFilter, "msgtype", "action", "policy_action", "external")
    search_fields = ("msgid", "sender", "roomid", "text")
    date_hierarchy = "msgtime"
    show_full_result_count = False
    actions = ("export_selected",)
    fields = (
        "source",
        "msgid",
        "seq",
        "action",
        "sender",
        "tolist",
        "roomid",
        "msgtime",
        "msgtype",
        "external",
        "revoked_msgid",
        "recalled_at",
        "media_status",
        "media_path",
        "media_sha256",
        "media_size",
        "media_error",
        "policy_action",
        "llm_reviewed_at",
        "llm_review",
        "llm_review_error",
        "purged_at",
        "transcript",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[ArchivedMessage]:
        return selectors.archived_messages_for_user(user=request.user).select_related("source")

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.export_archivedmessage")

    def access_shown_with(self, request: HttpRequest, obj: Model) -> list[Model]:
        # The page shows the chat around the opened message: each of those is read too.
        return [row for row in selectors.archive_conversation(message=obj) if row.pk != obj.pk]

    @admin.display(description=_("to"))
    def recipients(self, obj: ArchivedMessage) -> str:
        return obj.roomid or ", ".join(obj.tolist)

    @admin.display(description=_("text"))
    def short_text(self, obj: ArchivedMessage) -> str:
        return _short(obj.text) if obj.text else f"[{obj.msgtype}]"

    @admin.display(description=_("conversation"))
    def transcript(self, obj: ArchivedMessage) -> str:
        rows = selectors.archive_conversation(message=obj)
        return format_html(
            '<table class="transcript">{}</table>',
            format_html_join(
                "",
                '<tr style="{}"><td style="white-space: nowrap">{}</td><td>{}</td><td>{}</td></tr>',
                (
                    (
                        "background: #ffd" if row.pk == obj.pk else "",
                        timezone.localtime(row.msgtime).strftime("%Y-%m-%d %H:%M:%S"),
                        row.sender,
                        (row.text or f"[{row.msgtype}]")
                        + (f" ({_('recalled')})" if row.recalled_at else ""),
                    )
                    for row in rows
                ),
            ),
        )

    @admin.action(
        description=_("Export selected messages (JSONL + manifest)"), permissions=["export"]
    )
    def export_selected(self, request: HttpRequest, queryset: QuerySet[ArchivedMessage]):
        return _export_action(self, request, queryset, kind="messages")


@admin.register(ArchiveQuarantine)
class ArchiveQuarantineAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Scoped like archived messages: an officer sees the records of their sources only."""

    list_display = ("created_at", "source", "seq", "msgid", "error_code", "short_error")
    list_filter = (ArchiveSourceScopeFilter, "error_code")
    search_fields = ("msgid", "error")
    list_select_related = ("source",)
    show_full_result_count = False
    actions = ("retry",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ArchiveQuarantine]:
        return selectors.quarantined_for_user(user=request.user)

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404(_("No such record, or it is not assigned to you."))
        return obj

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.change_archivesource")

    @admin.action(
        description=_("Retry selected records (after adding a key)"), permissions=["retry"]
    )
    def retry(self, request: HttpRequest, queryset: QuerySet[ArchiveQuarantine]) -> None:
        # The vendor SDK runs on the archive workers, never inside a web request.
        from apps.audit.tasks import archive_quarantine_retry

        by_source: dict[int, list[int]] = {}
        for pk, source_id in queryset.values_list("pk", "source_id"):
            by_source.setdefault(source_id, []).append(pk)
        for source_id, ids in by_source.items():
            transaction.on_commit(
                lambda source_id=source_id, ids=ids: archive_quarantine_retry.delay(source_id, ids)
            )
        self.message_user(
            request,
            _(
                "%(count)d records queued for another try on the archive workers; records "
                "that open leave this list."
            )
            % {"count": sum(len(ids) for ids in by_source.values())},
        )

    @admin.display(description=_("error"))
    def short_error(self, obj: ArchiveQuarantine) -> str:
        return _short(obj.error, 100)


# --- read-only audit records --------------------------------------------------------------------


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("seq", "kind", "ref", "created_at", "short_hash")
    list_filter = ("kind",)
    search_fields = ("ref", "entry_hash")
    show_full_result_count = False
    readonly_fields = (
        "seq",
        "kind",
        "ref",
        "payload",
        "payload_hash",
        "prev_hash",
        "entry_hash",
        "created_at",
    )

    @admin.display(description=_("entry hash"))
    def short_hash(self, obj: LedgerEntry) -> str:
        return obj.entry_hash[:16] + "…"


@admin.register(LedgerCheckpoint)
class LedgerCheckpointAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("day", "seq", "head_hash", "created_at")


@admin.register(AccessLog)
class AccessLogAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "username", "action", "object_type", "object_id", "short_reason")
    list_filter = ("action", "object_type", "created_at")
    search_fields = ("username", "object_id", "reason", "request_id")
    date_hierarchy = "created_at"
    show_full_result_count = False

    @admin.display(description=_("reason"))
    def short_reason(self, obj: AccessLog) -> str:
        return _short(obj.reason)


@admin.register(OperatorAuditEntry)
class OperatorAuditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "actor_username", "action", "object_type", "object_repr")
    list_filter = ("action", "created_at")
    search_fields = ("actor_username", "action", "object_id", "object_repr", "request_id")
    date_hierarchy = "created_at"
    show_full_result_count = False


# --- who may do what: changes to users, groups and their permissions are audited too ----


def _permission_names(permissions: QuerySet) -> list[str]:
    return sorted(f"{p.content_type.app_label}.{p.codename}" for p in permissions)


class ScopeGrantGuardMixin:
    """Review scope is granted on the officer-assignment page only (`review_scope_set`).

    The user and group pages neither offer the scope permissions nor groups that carry
    scope, and keep whatever of them a user or group already holds when the form is saved,
    so `change_user` or `change_group` cannot widen anyone's scope, their own included.
    """

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name in ("user_permissions", "permissions"):
            kwargs["queryset"] = Permission.objects.exclude(
                pk__in=selectors.scope_permissions()
            ).select_related("content_type")
        elif db_field.name == "groups":
            kwargs["queryset"] = Group.objects.exclude(pk__in=selectors.scope_groups())
        return super().formfield_for_manytomany(db_field, request, **kwargs)  # type: ignore[misc]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        obj = form.instance
        if change:
            kept = {
                "user_permissions": lambda: selectors.scope_permissions().filter(user=obj),
                "permissions": lambda: selectors.scope_permissions().filter(group=obj),
                "groups": lambda: selectors.scope_groups().filter(user=obj),
            }
            for name, held in kept.items():
                if name in form.cleaned_data:
                    form.cleaned_data[name] = [*form.cleaned_data[name], *held()]
        super().save_related(request, form, formsets, change)  # type: ignore[misc]


class AuditedUserAdmin(ScopeGrantGuardMixin, OperatorAuditAdminMixin, UserAdmin):
    audit_action_prefix = "auth.user"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Setting a superuser's password or e-mail would be taking over their scope.
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            # A superuser sees every bot and source: only a superuser makes another.
            fields.append("is_superuser")
        return fields

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        """Django's password page, with the change recorded (that it changed, never how)."""
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            if request.method == "POST" and response.status_code == 302:
                user = self.get_object(request, unquote(id))
                operator_audit_record(
                    actor=request.user,
                    action="auth.user.password_set",
                    obj=user,
                    before={"password": "(old)"},
                    after={"password": "(changed)"},
                    request_id=_request_id(request),
                )
        return response

    def audit_snapshot(self, obj: Model) -> dict[str, Any] | None:
        data = super().audit_snapshot(obj)
        if data is not None and "password" in data:
            data["password"] = "(set)" if data["password"] else ""  # never the hash
        if data is not None and obj.pk is not None:
            # Names, not ids, so the entry still reads right after a permission is renamed.
            data["permission_names"] = _permission_names(
                obj.user_permissions.select_related("content_type")  # type: ignore[attr-defined]
            )
            data["group_names"] = sorted(obj.groups.values_list("name", flat=True))  # type: ignore[attr-defined]
        return data


class AuditedGroupAdmin(ScopeGrantGuardMixin, OperatorAuditAdminMixin, GroupAdmin):
    audit_action_prefix = "auth.group"

    def audit_snapshot(self, obj: Model) -> dict[str, Any] | None:
        data = super().audit_snapshot(obj)
        if data is not None and obj.pk is not None:
            data["permission_names"] = _permission_names(
                obj.permissions.select_related("content_type")  # type: ignore[attr-defined]
            )
        return data


admin.site.unregister(User)
admin.site.register(User, AuditedUserAdmin)
admin.site.unregister(Group)
admin.site.register(Group, AuditedGroupAdmin)

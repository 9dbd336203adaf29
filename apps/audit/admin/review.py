"""Review cases: scoped to the officer's assignments, opened with a reason, decided by a
service; triaged from the list (`triage`); the officer-assignment page (`assignments`) is
routed here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from apps.audit import selectors
from apps.audit.admin.assignments import scope_view
from apps.audit.admin.exports import export_action
from apps.audit.admin.filters import ReviewBotFilter, ReviewDepartmentFilter, ReviewSourceFilter
from apps.audit.admin.mixins import ACCESS_REASON_FIELD, AccessReasonAdminMixin, request_id_of
from apps.audit.admin.triage import case_neighbours, case_snippet, case_user
from apps.audit.forms import ReviewCaseForm
from apps.audit.models import AccessLog, ReviewCase
from apps.audit.services.access import access_log_record_many
from apps.audit.services.review import (
    ReviewError,
    review_assign,
    review_decide,
)


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


@admin.register(ReviewCase)
class ReviewCaseAdmin(AccessReasonAdminMixin, admin.ModelAdmin):
    form = ReviewCaseForm
    list_display = (
        "id",
        "created_at",
        "status",
        "action",
        "user",
        "scope",
        "policy",
        "snippet",
        "assignee",
        "decision",
    )
    list_display_links = ("id", "created_at")
    list_filter = (
        "status",
        "action",
        "decision",
        ("policy", admin.RelatedOnlyFieldListFilter),
        ("assignee", admin.RelatedOnlyFieldListFilter),
        ReviewBotFilter,
        ReviewSourceFilter,
        ReviewDepartmentFilter,
        "turn__is_test",
    )
    search_fields = ("note", "turn__msgid", "archived_message__msgid")
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = (
        "assign_to_me",
        "decide_dismiss",
        "decide_confirm",
        "export_selected",
        "export_selected_csv",
        "export_selected_xlsx",
    )
    change_form_template = "admin/audit/reviewcase/change_form.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "status",
                    "action",
                    "policy",
                    "scope",
                    "created_at",
                    "assignee",
                    "transcript_link",
                )
            },
        ),
        (_("Content"), {"fields": ("source_content", "matched_rules")}),
        (_("Decision"), {"fields": ("note", "decided_by", "decided_at")}),
    )
    readonly_fields = (
        "status",
        "action",
        "policy",
        "scope",
        "created_at",
        "assignee",
        "transcript_link",
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

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        # The decision comes from the page's decision buttons, not a field in a fieldset.
        kwargs["fields"] = ("decision", "note")
        return super().get_form(request, obj, change, **kwargs)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """The list shows snippets of content: every record it shows is access-logged."""
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            shown = [
                record
                for case in changelist.result_list
                for record in (case.turn, case.archived_message)
                if record is not None
            ]
            access_log_record_many(
                user=request.user,
                objects=shown,
                action=AccessLog.Action.VIEW,
                reason=gettext("Listed with a snippet in the review triage list."),
                request_id=request_id_of(request),
            )
        return response

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        context = dict(extra_context or {})
        if ACCESS_REASON_FIELD not in request.POST:
            case = self.get_object(request, unquote(object_id))
            previous, following = case_neighbours(self, request, case)
            filters = request.GET.get("_changelist_filters", "")
            suffix = f"?{urlencode({'_changelist_filters': filters})}" if filters else ""
            for key, pk in (("previous_case_url", previous), ("next_case_url", following)):
                if pk is not None:
                    url = reverse("admin:audit_reviewcase_change", args=[pk])
                    context[key] = url + suffix
            # Read by `response_post_save_change`: after a decision, on to the next case.
            request.review_next_case_url = context.get("next_case_url")  # type: ignore[attr-defined]
            context["decisions"] = [
                (value, label)
                for value, label in ReviewCase.Decision.choices
                if value != ReviewCase.Decision.NONE
            ]
        return super().change_view(request, object_id, form_url, context)

    def response_post_save_change(self, request: HttpRequest, obj: ReviewCase) -> HttpResponse:
        following = getattr(request, "review_next_case_url", None)
        if following:
            return HttpResponseRedirect(following)
        return super().response_post_save_change(request, obj)

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

    @admin.display(description=_("user"))
    def user(self, obj: ReviewCase) -> str:
        return case_user(obj)

    @admin.display(description=_("snippet"))
    def snippet(self, obj: ReviewCase) -> str:
        return case_snippet(obj)

    @admin.display(description=_("conversation"))
    def transcript_link(self, obj: ReviewCase) -> str:
        if obj.turn is not None:
            url = reverse("admin:bots_conversation_change", args=[obj.turn.conversation_id])
            return format_html(
                '<a href="{}" id="case-conversation">{}</a>', url, _("Open the conversation")
            )
        if obj.archived_message is not None:
            url = reverse("admin:audit_archivedmessage_change", args=[obj.archived_message_id])
            return format_html(
                '<a href="{}" id="case-conversation">{}</a>', url, _("Open the archived chat")
            )
        return "—"

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
                request_id=request_id_of(request),
            )
        except ReviewError as exc:
            raise PermissionDenied(str(exc)) from exc

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        """Nothing related is edited here; the decision was saved by the service."""

    def _decide(self, request: HttpRequest, queryset: QuerySet[ReviewCase], decision: str) -> None:
        decided = 0
        for case in queryset.filter(status=ReviewCase.Status.OPEN):
            review_decide(
                case=case, user=request.user, decision=decision, request_id=request_id_of(request)
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
                request_id=request_id_of(request),
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
        return export_action(self, request, queryset, kind="cases")

    @admin.action(description=_("Export selected cases (CSV + manifest)"), permissions=["export"])
    def export_selected_csv(self, request: HttpRequest, queryset: QuerySet[ReviewCase]):
        return export_action(self, request, queryset, kind="cases", fmt="csv")

    @admin.action(description=_("Export selected cases (XLSX + manifest)"), permissions=["export"])
    def export_selected_xlsx(self, request: HttpRequest, queryset: QuerySet[ReviewCase]):
        return export_action(self, request, queryset, kind="cases", fmt="xlsx")

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
        return scope_view(self, request)

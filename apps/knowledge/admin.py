from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from apps.audit.admin.mixins import OperatorAuditAdminMixin, request_id_of
from apps.core.admin import ReadOnlyAdminMixin
from apps.directory.forms import GroupChatForm
from apps.directory.models import DirectoryUser, GroupChat
from apps.knowledge import admin_workspace
from apps.knowledge.forms import DocumentForm, KnowledgeBaseForm
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.services.config import (
    document_delete,
    document_save,
    documents_reindex,
    knowledge_base_delete,
    knowledge_base_save,
)
from apps.knowledge.services.search import SEARCH_ALL_PERMISSION

_AUDIENCE_FIELDS = ("allowed_departments", "allowed_userids", "allowed_tags")


def _audience(obj: KnowledgeBase | Document, *, empty: str) -> str:
    names = [*obj.allowed_departments, *obj.allowed_userids, *obj.allowed_tags]
    return ", ".join(names) if names else empty


@admin.register(DirectoryUser)
class DirectoryUserAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    # The action names predate the move to the directory app; the audit trail keeps them.
    audit_action_prefix = "knowledge.directoryuser"
    list_display = ("userid", "name", "department_list", "tag_list", "updated_at")
    search_fields = ("userid", "name")
    readonly_fields = ("updated_at",)

    @admin.display(description=DirectoryUser._meta.get_field("departments").verbose_name)
    def department_list(self, obj: DirectoryUser) -> str:
        return ", ".join(obj.departments)

    @admin.display(description=DirectoryUser._meta.get_field("tags").verbose_name)
    def tag_list(self, obj: DirectoryUser) -> str:
        return ", ".join(obj.tags)


@admin.register(GroupChat)
class GroupChatAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    """Who reads a group's answers: the bots use only passages all these members may read."""

    # The action names predate the move to the directory app; the audit trail keeps them.
    audit_action_prefix = "knowledge.groupchat"
    form = GroupChatForm
    list_display = ("chat_id", "name", "member_count", "updated_at")
    search_fields = ("chat_id", "name")
    readonly_fields = ("updated_at",)
    fieldsets = (
        (
            None,
            {
                "fields": ("chat_id", "name", "member_userids", "updated_at"),
                "description": _(
                    "WeCom does not tell a bot who is in a group chat. A group chat that is "
                    "not listed here, or whose list does not contain the person asking, is "
                    "answered only from knowledge open to everyone. With a complete list, "
                    "answers use only passages every member may read."
                ),
            },
        ),
    )

    @admin.display(description=_("members"))
    def member_count(self, obj: GroupChat) -> int:
        return len(obj.member_userids)


@admin.register(KnowledgeBase)
class KnowledgeBaseAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    form = KnowledgeBaseForm
    list_display = ("name", "slug", "embedder", "embedding_profile", "document_count", "audience")
    list_select_related = ("embedding_profile",)
    search_fields = ("name", "slug", "description")
    prepopulated_fields = {"slug": ("name",)}
    autocomplete_fields = ("embedding_profile",)
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "slug", "description")}),
        (
            _("Indexing"),
            {
                "fields": ("embedder", "embedding_profile", "chunk_size", "chunk_overlap"),
                "description": _(
                    "A new chunk size or overlap re-indexes every document of the knowledge "
                    "base. A new embedder (or GGUF embedding model) re-embeds the passages in "
                    "the background; the current vectors keep answering until the new ones "
                    "are swapped in."
                ),
            },
        ),
        (
            _("Audience"),
            {
                "fields": _AUDIENCE_FIELDS,
                "description": _(
                    "Who may get answers from these documents. Leave all three empty for "
                    "everyone; otherwise an employee needs to be listed, or be in a listed "
                    "department (or its sub-departments) or tag."
                ),
            },
        ),
        (_("Answers"), {"fields": ("answer_only_from_sources",)}),
        (_("History"), {"fields": ("created_at", "updated_at")}),
    )

    class Media:
        css = {"all": ("knowledge/kb_workspace.css",)}
        js = ("knowledge/kb_workspace.js",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[KnowledgeBase]:
        return super().get_queryset(request).annotate(document_total=Count("documents"))

    def get_urls(self) -> list[Any]:
        def view(function: Any, suffix: str) -> Any:
            def bound(request: HttpRequest, object_id: str) -> HttpResponse:
                return function(self, request, object_id)

            return path(
                f"<path:object_id>/{suffix}/",
                self.admin_site.admin_view(bound),
                name=f"knowledge_knowledgebase_{suffix}",
            )

        return [
            view(admin_workspace.documents_upload_view, "upload"),
            view(admin_workspace.documents_progress_view, "progress"),
            view(admin_workspace.retrieval_test_view, "retrieval"),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The documents, uploads and retrieval test of the knowledge base, under its form."""
        kb = self.get_object(request, unquote(object_id))
        if kb is not None and self.has_view_permission(request, kb):
            extra_context = {
                **(extra_context or {}),
                "kb_workspace": admin_workspace.workspace_context(request, kb),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description=_("documents"), ordering="document_total")
    def document_count(self, obj: KnowledgeBase) -> int:
        return obj.document_total

    @admin.display(description=_("audience"))
    def audience(self, obj: KnowledgeBase) -> str:
        return _audience(obj, empty=str(_("everyone")))

    def audit_save(
        self,
        request: HttpRequest,
        obj: KnowledgeBase,
        form: Any,
        change: bool,
        related: Callable[[], None],
    ) -> None:
        count = knowledge_base_save(
            kb=obj, actor=request.user, related=related, request_id=request_id_of(request)
        )
        if count:
            self.message_user(
                request,
                ngettext(
                    "%(count)d document is being re-indexed.",
                    "%(count)d documents are being re-indexed.",
                    count,
                )
                % {"count": count},
            )

    def audit_delete(self, request: HttpRequest, obj: KnowledgeBase) -> None:
        knowledge_base_delete(kb=obj, actor=request.user, request_id=request_id_of(request))


@admin.register(Document)
class DocumentAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    form = DocumentForm
    list_display = (
        "__str__",
        "kb",
        "original_filename",
        "version",
        "active_version",
        "live_status",
        "chunk_count",
        "expires_on",
        "updated_at",
    )
    list_filter = ("status", "kb", "expires_on")
    list_select_related = ("kb",)
    search_fields = ("title", "original_filename")
    autocomplete_fields = ("kb", "owner")
    actions = ("reindex",)
    date_hierarchy = "updated_at"
    readonly_fields = (
        "live_status",
        "original_filename",
        "version",
        "active_version",
        "error_code",
        "error_message",
        "sha256",
        "size_bytes",
        "pages",
        "chunk_count",
        "audience_summary",
        "created_at",
        "updated_at",
    )

    class Media:
        js = ("knowledge/document_live.js",)

    def get_urls(self) -> list[Any]:
        def passages(request: HttpRequest, object_id: str) -> HttpResponse:
            return admin_workspace.passages_view(self, request, object_id)

        return [
            path(
                "<path:object_id>/passages/",
                self.admin_site.admin_view(passages),
                name="knowledge_document_passages",
            ),
            *super().get_urls(),
        ]

    def get_fieldsets(self, request: HttpRequest, obj: Document | None = None) -> Any:
        fieldsets: list[tuple[Any, dict[str, Any]]] = [
            (None, {"fields": ("kb", "upload", "title", "owner", "expires_on")}),
            (
                _("Audience"),
                {
                    "fields": _AUDIENCE_FIELDS
                    if obj is None
                    else (*_AUDIENCE_FIELDS, "audience_summary"),
                    "description": _(
                        "Leave empty to use the knowledge base's audience; anything set here "
                        "replaces it for this document."
                    ),
                },
            ),
        ]
        if obj is not None:
            fieldsets.append(
                (
                    _("Indexing"),
                    {
                        "fields": (
                            "live_status",
                            "original_filename",
                            ("version", "active_version"),
                            ("error_code", "error_message"),
                            ("pages", "chunk_count"),
                            ("sha256", "size_bytes"),
                            ("created_at", "updated_at"),
                        )
                    },
                )
            )
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Document | None = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        return (*fields, "kb") if obj is not None else fields

    @admin.display(description=_("status"), ordering="status")
    def live_status(self, obj: Document) -> str:
        """Status and progress; the page's script follows pending and running ingestions live."""
        live = obj.status in (Document.Status.PENDING, Document.Status.PROCESSING)
        text = obj.get_status_display()
        if live:
            text = f"{text} · {obj.progress}%"
        elif obj.status == Document.Status.FAILED and obj.error_message:
            text = f"{text}: {obj.error_message}"
        return format_html(
            '<span class="kb-document-live" data-url="{}" data-live="{}">'
            '<progress max="100" value="{}"{}></progress> <span class="kb-document-text">{}</span>'
            "</span>",
            f"/ws/knowledge/documents/{obj.pk}/",
            "1" if live else "0",
            obj.progress,
            "" if live else " hidden",
            text,
        )

    @admin.display(description=_("who may read it"))
    def audience_summary(self, obj: Document) -> str:
        if obj.has_own_audience:
            return _audience(obj, empty="")
        return format_html(
            "{} ({})", _audience(obj.kb, empty=str(_("everyone"))), _("from the knowledge base")
        )

    @admin.action(description=_("Re-index the selected documents"), permissions=["change"])
    def reindex(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        count = documents_reindex(
            documents=queryset, actor=request.user, request_id=request_id_of(request)
        )
        self.message_user(
            request,
            ngettext(
                "%(count)d document queued for re-indexing.",
                "%(count)d documents queued for re-indexing.",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )

    def audit_save(
        self,
        request: HttpRequest,
        obj: Document,
        form: Any,
        change: bool,
        related: Callable[[], None],
    ) -> None:
        upload = form.cleaned_data.get("upload")
        if not change and obj.owner_id is None:
            obj.owner = request.user
        result = document_save(
            document=obj,
            actor=request.user,
            upload=upload,
            # Only what the form edits: the rest of the row belongs to ingestion.
            fields=None if upload is not None else form.changed_data,
            related=related,
            request_id=request_id_of(request),
        )
        if result is not None and result.outcome == "unchanged":
            self.message_user(
                request,
                _("The uploaded file is identical to the current version; nothing to index."),
                messages.WARNING,
            )

    def audit_delete(self, request: HttpRequest, obj: Document) -> None:
        document_delete(document=obj, actor=request.user, request_id=request_id_of(request))


@admin.register(Chunk)
class ChunkAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: passages are what ingestion made of a document, for checking retrieval."""

    list_display = (
        "document",
        "document_version",
        "position",
        "heading",
        "token_count",
        "page",
        "enabled",
    )
    list_filter = ("document__kb", "enabled")
    list_select_related = ("document",)
    search_fields = ("text", "document__title", "document__original_filename")
    fields = (
        "document",
        "document_version",
        "generation",
        "position",
        "heading_path",
        "page",
        "token_count",
        "text",
        "embedding_model",
        "enabled",
    )
    readonly_fields = fields
    show_full_result_count = False

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        """Passages of every audience, searchable by text: the unfiltered search permission."""
        return super().has_view_permission(request, obj) and request.user.has_perm(
            SEARCH_ALL_PERMISSION
        )

    @admin.display(description=_("headings"))
    def heading(self, obj: Chunk) -> str:
        return " > ".join(obj.heading_path)

"""Session archive: sources and their keys (configuration), archived messages and
quarantined records (content, scoped to the officer's sources)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest
from django.template.loader import render_to_string
from django.utils.translation import gettext_lazy as _

from apps.audit import selectors
from apps.audit.admin.exports import export_action
from apps.audit.admin.filters import ArchiveSourceScopeFilter
from apps.audit.admin.mixins import (
    AccessReasonAdminMixin,
    OperatorAuditAdminMixin,
    ReadOnlyAdminMixin,
    request_id_of,
    shorten,
)
from apps.audit.forms import ArchiveKeyForm, ArchiveSourceForm
from apps.audit.models import (
    ArchivedMessage,
    ArchiveKey,
    ArchiveQuarantine,
    ArchiveSource,
    AuditPolicy,
)
from apps.audit.services.configuration import (
    archive_source_delete,
    archive_source_save,
    archive_source_snapshot,
)
from apps.core.fields import is_undecryptable


def archive_thread(rows: list[ArchivedMessage]) -> list[dict[str, Any]]:
    """Each message with its LLM reviews in words (policy name, label, risk, reason)."""
    ids = {key for row in rows for key in (row.llm_review or {})}
    names = {
        str(pk): name
        for pk, name in AuditPolicy.objects.filter(
            pk__in=[int(key) for key in ids if str(key).isdigit()]
        ).values_list("pk", "name")
    }
    return [
        {
            "message": row,
            "reviews": [
                {
                    "policy": names.get(str(key), f"#{key}"),
                    "label": verdict.get("label", ""),
                    "risk": verdict.get("risk", ""),
                    "reason": verdict.get("reason", ""),
                }
                for key, verdict in (row.llm_review or {}).items()
                if isinstance(verdict, dict)
            ],
        }
        for row in rows
    ]


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

    def audit_snapshot(self, obj: Model | None) -> dict[str, Any] | None:
        return archive_source_snapshot(obj)

    def audit_save(
        self,
        request: HttpRequest,
        obj: ArchiveSource,
        form: Any,
        change: bool,
        related: Callable[[], None],
    ) -> None:
        archive_source_save(
            source=obj, actor=request.user, related=related, request_id=request_id_of(request)
        )

    def audit_delete(self, request: HttpRequest, obj: ArchiveSource) -> None:
        archive_source_delete(source=obj, actor=request.user, request_id=request_id_of(request))

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
        "llm_review_error",
        "purged_at",
        "transcript",
    )
    readonly_fields = fields

    # A message shown in the chat around another one was opened under that reason.
    access_reason_reuse = True

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
        return shorten(obj.text) if obj.text else f"[{obj.msgtype}]"

    @admin.display(description=_("conversation"))
    def transcript(self, obj: ArchivedMessage) -> str:
        rows = selectors.archive_conversation(message=obj)
        return render_to_string(
            "admin/audit/archive_thread.html",
            {"thread": archive_thread(rows), "focus": obj},
        )

    @admin.action(
        description=_("Export selected messages (JSONL + manifest)"), permissions=["export"]
    )
    def export_selected(self, request: HttpRequest, queryset: QuerySet[ArchivedMessage]):
        return export_action(self, request, queryset, kind="messages")


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
        return shorten(obj.error, 100)

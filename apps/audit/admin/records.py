"""Read-only audit records: the ledger, its checkpoints, access logs, operator audit."""

from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from apps.audit.models import AccessLog, LedgerCheckpoint, LedgerEntry, OperatorAuditEntry
from apps.core.admin import ReadOnlyAdminMixin, shorten


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
        return shorten(obj.reason)


@admin.register(OperatorAuditEntry)
class OperatorAuditEntryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "actor_username", "action", "object_type", "object_repr")
    list_filter = ("action", "created_at")
    search_fields = ("actor_username", "action", "object_id", "object_repr", "request_id")
    date_hierarchy = "created_at"
    show_full_result_count = False

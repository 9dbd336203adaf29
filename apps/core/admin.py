"""Admin pieces with no domain behind them, shared by every app's admin.

The operator-audit and access-reason mixins stay in `apps.audit.admin.mixins`: they write
audit rows, so they belong to the audit app, which the other apps may depend on.
"""

from __future__ import annotations

from django.http import HttpRequest


def request_id_of(request: HttpRequest) -> str:
    return getattr(request, "request_id", "")


def shorten(text: str, length: int = 60) -> str:
    return text if len(text) <= length else text[:length] + "…"


class ReadOnlyAdminMixin:
    """Records are evidence: nobody adds, edits or deletes them in the admin."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

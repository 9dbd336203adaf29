"""Admin mixins that write audit rows: operator audit and access reasons.

The generic read-only mixin and helpers live in `apps.core.admin`; they are re-exported here
so the audit admin modules keep one import line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.audit import selectors
from apps.audit.forms import AccessReasonForm
from apps.audit.models import AccessLog
from apps.audit.services.access import access_log_record, access_log_record_many
from apps.audit.services.operator_audit import (
    model_delete_audited,
    model_save_audited,
    model_snapshot,
)
from apps.core.admin import ReadOnlyAdminMixin, request_id_of, shorten

__all__ = [
    "AccessReasonAdminMixin",
    "OperatorAuditAdminMixin",
    "ReadOnlyAdminMixin",
    "request_id_of",
    "shorten",
]


class OperatorAuditAdminMixin:
    """Saves and deletes go through a service that writes the operator audit entry.

    The admin only passes the signed-in user and the request id: the entry is the
    service's, so a change made by a command or the API is audited the same way. The save
    happens in `save_related`, after the form's many-to-many fields and inlines are known,
    so one entry covers all of it. Admins of models with a service of their own override
    `audit_save`/`audit_delete`; the others get `model_save_audited`, with the action
    named by `audit_action_prefix` (`audit.policy` → `audit.policy.update`).
    """

    audit_action_prefix = ""

    def audit_prefix(self) -> str:
        meta = self.model._meta  # type: ignore[attr-defined]
        return self.audit_action_prefix or f"{meta.app_label}.{meta.model_name}"

    def audit_snapshot(self, obj: Model | None) -> dict[str, Any] | None:
        return model_snapshot(obj)

    def audit_save(
        self,
        request: HttpRequest,
        obj: Model,
        form: Any,
        change: bool,
        related: Callable[[], None],
    ) -> None:
        model_save_audited(
            obj=obj,
            actor=request.user,
            action_prefix=self.audit_prefix(),
            snapshot=self.audit_snapshot,
            related=related,
            request_id=request_id_of(request),
        )

    def audit_delete(self, request: HttpRequest, obj: Model) -> None:
        model_delete_audited(
            obj=obj,
            actor=request.user,
            action_prefix=self.audit_prefix(),
            snapshot=self.audit_snapshot,
            request_id=request_id_of(request),
        )

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        """Nothing yet: `save_related` saves the row and its relations through the service."""

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        parent = super()

        def related() -> None:
            parent.save_related(request, form, formsets, change)  # type: ignore[misc]

        self.audit_save(request, form.instance, form, change, related)

    def delete_model(self, request: HttpRequest, obj: Model) -> None:
        self.audit_delete(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        with transaction.atomic():
            for obj in queryset:
                self.audit_delete(request, obj)


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
    # Whether a reason given for the conversation that showed this record covers opening
    # it (`selectors.access_reason_inherited`): one reason per conversation.
    access_reason_reuse = False

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
        given_with: AccessLog | None = None
        if reason is None and self.access_reason_reuse:
            given_with = selectors.access_reason_inherited(user=request.user, obj=obj)
            if given_with is not None:
                reason = given_with.reason
        if reason is None and not self.access_reason_required(request):
            reason = self.access_reason_default(request)
        if not reason:
            return self._access_reason_form(request, obj, AccessReasonForm())
        with transaction.atomic():
            entry = access_log_record(
                user=request.user,
                obj=obj,
                action=AccessLog.Action.VIEW,
                reason=reason,
                request_id=request_id_of(request),
                opened_with=given_with,
            )
            access_log_record_many(
                user=request.user,
                objects=self.access_shown_with(request, obj),
                action=AccessLog.Action.VIEW,
                reason=reason,
                request_id=request_id_of(request),
                opened_with=given_with or entry,
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

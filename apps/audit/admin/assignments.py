"""The officer-assignment page: by officer (their bots and sources) or by one bot or archive
source (its officers). Linked from user, bot, archive-source pages and the review list, so
an admin reaches it from wherever they notice a missing assignment."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from apps.audit import selectors
from apps.audit.admin.mixins import request_id_of
from apps.audit.forms import ReviewOfficersForm, ReviewScopeForm
from apps.audit.models import ArchiveSource
from apps.audit.registry import bot_side_get
from apps.audit.services.review import review_officers_set, review_scope, review_scope_set


def _target(request: HttpRequest) -> tuple[str, Model] | None:
    """The bot or archive source named by `?bot=` or `?source=`, if any (else 404)."""
    for key, manager in (
        ("bot", bot_side_get().bot_model._default_manager),
        ("source", ArchiveSource.objects),
    ):
        value = request.GET.get(key)
        if value:
            obj = manager.filter(pk=value).first() if value.isdigit() else None
            if obj is None:
                raise Http404
            return key, obj
    return None


def _render(modeladmin: admin.ModelAdmin, request: HttpRequest, **context: Any) -> HttpResponse:
    return TemplateResponse(
        request,
        "admin/audit/review_scope.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": _("Officer assignments"),
            "opts": modeladmin.model._meta,
            **context,
        },
    )


def _target_view(
    modeladmin: admin.ModelAdmin, request: HttpRequest, key: str, target: Model
) -> HttpResponse:
    url = f"{reverse('admin:audit_reviewcase_scope')}?{key}={target.pk}"
    direct = selectors.officers_assigned_to(target=target, with_groups=False)
    if request.method == "POST":
        form = ReviewOfficersForm(request.POST)
        if form.is_valid():
            # Officers the page does not list (no longer staff or active) keep their scope.
            unlisted = direct.exclude(pk__in=form.fields["officers"].queryset.values("pk"))
            review_officers_set(
                target=target,
                officers=[*form.cleaned_data["officers"], *unlisted],
                actor=request.user,
                request_id=request_id_of(request),
            )
            modeladmin.message_user(request, _("Assignments saved."), messages.SUCCESS)
            return HttpResponseRedirect(url)
    else:
        form = ReviewOfficersForm(initial={"officers": list(direct)})
    meta = target._meta
    return _render(
        modeladmin,
        request,
        form=form,
        target=target,
        target_kind=meta.verbose_name,
        target_url=reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[target.pk]),
    )


def scope_view(modeladmin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    if not request.user.has_perm("audit.assign_reviewcase"):
        raise PermissionDenied
    target = _target(request)
    if target is not None:
        return _target_view(modeladmin, request, *target)
    if request.method == "POST":
        form = ReviewScopeForm(request.POST)
        if form.is_valid():
            review_scope_set(
                officer=form.cleaned_data["officer"],
                bots=form.cleaned_data["bots"],
                sources=form.cleaned_data["archive_sources"],
                actor=request.user,
                request_id=request_id_of(request),
            )
            modeladmin.message_user(request, _("Assignments saved."), messages.SUCCESS)
            url = reverse("admin:audit_reviewcase_scope")
            return HttpResponseRedirect(f"{url}?officer={form.cleaned_data['officer'].pk}")
    else:
        initial: dict[str, Any] = {}
        officer_id = request.GET.get("officer", "")
        officer = (
            get_user_model().objects.filter(pk=officer_id).first() if officer_id.isdigit() else None
        )
        if officer is not None:
            scope = review_scope(officer=officer)
            initial = {
                "officer": officer,
                "bots": scope["bots"],
                "archive_sources": scope["archive_sources"],
            }
        form = ReviewScopeForm(initial=initial)
    return _render(modeladmin, request, form=form)

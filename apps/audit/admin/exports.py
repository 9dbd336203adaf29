"""The export action shared by review cases and archived messages."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.audit.admin.mixins import request_id_of
from apps.audit.forms import ExportReasonForm
from apps.audit.services.export import export_write, export_zip

# Exports of up to this many records list their ids in the manifest's filters.
_MANIFEST_IDS = 1000


def export_action(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet,
    *,
    kind: str,
    fmt: str = "jsonl",
) -> HttpResponse:
    """Ask for a reason, then answer a zip of the JSONL (or CSV, XLSX) file and its manifest."""
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
                "format": fmt.upper(),
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
            request_id=request_id_of(request),
            fmt=fmt,
        )
        content = export_zip(result)
    response = HttpResponse(content, content_type="application/zip")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="audit-{kind}-{fmt}-{stamp}.zip"'
    return response

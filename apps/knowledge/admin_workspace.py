"""The knowledge base page's workspace: its documents, uploads, progress and a retrieval test.

These are admin views mounted by `KnowledgeBaseAdmin` and `DocumentAdmin`; they check the
same model-admin permissions as the pages they sit on and call the services, so every
upload and every passage switch is operator-audited and every search beyond one's own
audience is access-logged exactly as through the REST search.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db import DataError, IntegrityError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.translation import gettext as _

from apps.core.admin import request_id_of
from apps.directory.models import DirectoryUser
from apps.knowledge.forms import UPLOAD_ACCEPT, RetrievalTestForm, upload_check
from apps.knowledge.models import Document, KnowledgeBase
from apps.knowledge.services.config import document_upload, passage_enable_set
from apps.knowledge.services.ingest import UploadResult
from apps.knowledge.services.search import (
    SEARCH_ALL_PERMISSION,
    SearchNotAllowed,
    knowledge_search,
    search_needs_reason,
    search_readers,
)

PASSAGES_PER_PAGE = 50
# Directory users offered in the retrieval test's list; any other userid can be typed.
_USER_CHOICES = 500
_LIVE = (Document.Status.PENDING, Document.Status.PROCESSING)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def workspace_kb(model_admin: admin.ModelAdmin, request: HttpRequest, kb_id: str) -> KnowledgeBase:
    """The knowledge base if this user may view it and its documents; else 404 or 403."""
    kb = model_admin.get_object(request, unquote(kb_id))
    if kb is None:
        raise Http404
    if not (
        model_admin.has_view_permission(request, kb)
        and request.user.has_perm("knowledge.view_document")
    ):
        raise PermissionDenied
    return kb


def document_row(document: Document) -> dict[str, Any]:
    """One row of the workspace's table, for the page and for its polling alike."""
    status = str(document.get_status_display())
    if document.status == Document.Status.FAILED and document.error_message:
        status = f"{status}: {document.error_message}"
    return {
        "id": document.pk,
        "name": str(document),
        "status": document.status,
        "status_text": status,
        "stage": document.stage,
        "stage_text": document.stage_text if document.status in _LIVE else "",
        "progress": document.progress,
        "live": document.status in _LIVE,
        "passages": document.chunk_count,
        "updated": formats.date_format(
            timezone.localtime(document.updated_at), "SHORT_DATETIME_FORMAT"
        ),
        "url": reverse("admin:knowledge_document_change", args=[document.pk]),
        "passages_url": reverse("admin:knowledge_document_passages", args=[document.pk]),
    }


def document_rows(kb: KnowledgeBase) -> list[dict[str, Any]]:
    return [document_row(document) for document in kb.documents.order_by("original_filename")]


def workspace_context(request: HttpRequest, kb: KnowledgeBase) -> dict[str, Any]:
    """What the change page's template needs; empty when the user may not see documents."""
    user = request.user
    if not user.has_perm("knowledge.view_document"):
        return {}
    may_search_all = user.has_perm(SEARCH_ALL_PERMISSION)
    return {
        "documents": document_rows(kb),
        "may_upload": user.has_perm("knowledge.add_document")
        and user.has_perm("knowledge.change_document"),
        "may_search": may_search_all,
        "accept": UPLOAD_ACCEPT,
        "max_bytes": settings.KNOWLEDGE_MAX_UPLOAD_BYTES,
        "too_large": _("over the %(limit)s upload limit")
        % {"limit": filesizeformat(settings.KNOWLEDGE_MAX_UPLOAD_BYTES)},
        "upload_url": reverse("admin:knowledge_knowledgebase_upload", args=[kb.pk]),
        "progress_url": reverse("admin:knowledge_knowledgebase_progress", args=[kb.pk]),
        "retrieval_url": reverse("admin:knowledge_knowledgebase_retrieval", args=[kb.pk]),
        "retrieval_form": RetrievalTestForm(),
        "directory_users": DirectoryUser.objects.order_by("userid")[:_USER_CHOICES]
        if may_search_all
        else [],
    }


def _upload_message(result: UploadResult, name: str) -> str:
    document = result.document
    if result.outcome == "created":
        return _("%(name)s uploaded; indexing starts shortly.") % {"name": name}
    if result.outcome == "new_version":
        return _("%(name)s uploaded as version %(version)d.") % {
            "name": name,
            "version": document.version,
        }
    if result.outcome == "retry":
        return _("%(name)s is being indexed again.") % {"name": name}
    return _("%(name)s is identical to the current version; nothing to index.") % {"name": name}


def documents_upload_view(
    model_admin: admin.ModelAdmin, request: HttpRequest, kb_id: str
) -> HttpResponse:
    """Several files at once, each its own document (or next version); a refused file does
    not stop the others. Answers JSON to the page's script, else redirects with messages."""
    kb = workspace_kb(model_admin, request, kb_id)
    if request.method != "POST":
        return HttpResponseRedirect(reverse("admin:knowledge_knowledgebase_change", args=[kb.pk]))
    if not (
        request.user.has_perm("knowledge.add_document")
        and request.user.has_perm("knowledge.change_document")
    ):
        raise PermissionDenied
    files = request.FILES.getlist("files")
    results: list[dict[str, Any]] = []
    for upload in files:
        name = upload.name or ""
        try:
            upload_check(upload)
            result = document_upload(
                kb=kb,
                content=upload,
                filename=name,
                actor=request.user,
                owner=request.user,
                request_id=request_id_of(request),
            )
        except ValidationError as exc:
            results.append({"name": name, "ok": False, "message": " ".join(exc.messages)})
        except (DataError, IntegrityError):
            message = _("%(name)s could not be stored; check its name.") % {"name": name}
            results.append({"name": name, "ok": False, "message": message})
        else:
            results.append({"name": name, "ok": True, "message": _upload_message(result, name)})
    error = "" if files else _("Choose at least one file to upload.")
    if _wants_json(request):
        return JsonResponse(
            {"error": error, "files": results, "documents": document_rows(kb)},
            status=400 if error else 200,
        )
    if error:
        model_admin.message_user(request, error, messages.ERROR)
    for item in results:
        model_admin.message_user(
            request, item["message"], messages.SUCCESS if item["ok"] else messages.ERROR
        )
    url = reverse("admin:knowledge_knowledgebase_change", args=[kb.pk])
    return HttpResponseRedirect(f"{url}#kb-workspace")


def documents_progress_view(
    model_admin: admin.ModelAdmin, request: HttpRequest, kb_id: str
) -> HttpResponse:
    """The documents' rows, polled by the page while any of them is being indexed."""
    kb = workspace_kb(model_admin, request, kb_id)
    rows = document_rows(kb)
    return JsonResponse({"documents": rows, "live": any(row["live"] for row in rows)})


def _method_label(methods: tuple[str, ...] | list[str]) -> str:
    if len(methods) > 1:
        return _("both")
    return _("dense") if "dense" in methods else _("lexical")


def retrieval_test_view(
    model_admin: admin.ModelAdmin, request: HttpRequest, kb_id: str
) -> HttpResponse:
    """The search a bot runs over this knowledge base, as all audiences or as one employee.

    Like the REST search: all audiences, or another employee, needs the search permission,
    and such a search needs a reason and is access-logged before its hits are shown.
    """
    kb = workspace_kb(model_admin, request, kb_id)
    if request.method != "POST":
        return JsonResponse({"error": _("Send the question with POST.")}, status=405)
    # The page's own view is every audience, or any employee's: both need the permission.
    denied = _("Searching all knowledge or as an employee needs the permission to search all.")
    if not request.user.has_perm(SEARCH_ALL_PERMISSION):
        return JsonResponse({"error": denied}, status=403)
    form = RetrievalTestForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors}, status=400)
    data = form.cleaned_data
    userid = data["userid"] or None
    try:
        readers = search_readers(user=request.user, userid=userid)
    except SearchNotAllowed:
        return JsonResponse({"error": denied}, status=403)
    if search_needs_reason(user=request.user, readers=readers) and not data["reason"]:
        reason = _("Give a reason: this search is recorded in the access log.")
        return JsonResponse({"errors": {"reason": [reason]}}, status=400)
    hits = knowledge_search(
        user=request.user,
        knowledge_bases=[kb],
        readers=readers,
        query=data["question"],
        top_k=data["top_k"] or 5,
        reason=data["reason"],
    )
    return JsonResponse(
        {
            "question": data["question"],
            "userid": userid,
            "hits": [
                {
                    **hit.as_dict(),
                    "method": _method_label(hit.methods),
                    "url": reverse("admin:knowledge_document_passages", args=[hit.document_id]),
                }
                for hit in hits
            ],
        }
    )


def passages_view(
    model_admin: admin.ModelAdmin, request: HttpRequest, document_id: str
) -> HttpResponse:
    """A document's searchable passages with their text; POST enables or disables one.

    Passages of every audience are shown, so this needs the search-all permission, as the
    passage list does.
    """
    document = model_admin.get_object(request, unquote(document_id))
    if document is None:
        raise Http404
    if not (
        model_admin.has_view_permission(request, document)
        and request.user.has_perm(SEARCH_ALL_PERMISSION)
    ):
        raise PermissionDenied
    chunks = document.chunks.filter(generation=document.active_generation).order_by("position")
    page_number = request.GET.get("page") or request.POST.get("page") or 1
    may_change = model_admin.has_change_permission(request, document)
    if request.method == "POST":
        if not may_change:
            raise PermissionDenied
        chunk = get_object_or_404(chunks, pk=request.POST.get("chunk") or 0)
        enabled = request.POST.get("enabled") == "1"
        passage_enable_set(
            chunk=chunk, enabled=enabled, actor=request.user, request_id=request_id_of(request)
        )
        text = (
            _("Passage %(position)d enabled.") if enabled else _("Passage %(position)d disabled.")
        )
        model_admin.message_user(request, text % {"position": chunk.position}, messages.SUCCESS)
        url = reverse("admin:knowledge_document_passages", args=[document.pk])
        return HttpResponseRedirect(f"{url}?page={page_number}#passage-{chunk.pk}")
    page = Paginator(chunks, PASSAGES_PER_PAGE).get_page(page_number)
    return TemplateResponse(
        request,
        "admin/knowledge/document/passages.html",
        {
            **model_admin.admin_site.each_context(request),
            "title": _("Passages of %(document)s") % {"document": document},
            "opts": model_admin.model._meta,
            "original": document,
            "page": page,
            "may_change": may_change,
        },
    )

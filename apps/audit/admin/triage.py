"""Review triage helpers: the list's user and snippet columns, the case page's neighbours.

An officer decides most cases from the list, so the list shows who, where and the matched
words in context; the snippet shows content, so the list logs every record it shows.
"""

from __future__ import annotations

import copy
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, QueryDict
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext

from apps.audit.models import ReviewCase

# Characters of context shown on each side of the first matched span.
SNIPPET_CONTEXT = 30


def case_text(case: ReviewCase) -> tuple[str, list[dict[str, Any]]]:
    """The flagged text and the match spans within it (turns: the subject that matched)."""
    matches = [m for m in case.matches or [] if isinstance(m, dict) and "start" in m]
    if case.turn is not None:
        subject = next((m.get("in") for m in matches), "answer")
        text = case.turn.question if subject == "question" else case.turn.answer
        return text or "", [m for m in matches if m.get("in") == subject]
    if case.archived_message is not None and not case.archived_message.purged_at:
        return case.archived_message.text or "", matches
    return "", []


def case_user(case: ReviewCase) -> str:
    if case.turn is not None:
        if case.turn.is_test:  # asked from a bot's test chat, not by this employee
            return f"{case.turn.conversation.userid} ({gettext('test chat')})"
        return case.turn.conversation.userid
    if case.archived_message is not None:
        return case.archived_message.sender
    return "—"


def case_snippet(case: ReviewCase) -> str:
    """The text around the first match with every match inside it in <mark>, escaped."""
    text, matches = case_text(case)
    spans = sorted(
        (m["start"], m["end"]) for m in matches if 0 <= m["start"] < m["end"] <= len(text)
    )
    if not spans:
        return format_html("{}", text[: 2 * SNIPPET_CONTEXT] or "—")
    first = spans[0][0]
    start = max(0, first - SNIPPET_CONTEXT)
    end = min(
        len(text), max(e for s, e in spans if s < first + 2 * SNIPPET_CONTEXT) + SNIPPET_CONTEXT
    )
    parts: list[tuple[str, str]] = [("{}", "…")] if start > 0 else []
    position = start
    for span_start, span_end in spans:
        if span_start < position or span_end > end:
            continue
        parts += [("{}", text[position:span_start]), ("<mark>{}</mark>", text[span_start:span_end])]
        position = span_end
    parts.append(("{}", text[position:end]))
    if end < len(text):
        parts.append(("{}", "…"))
    return format_html(
        '<span class="review-snippet">{}</span>',
        format_html_join("", "{}", ((format_html(fmt, value),) for fmt, value in parts)),
    )


def case_neighbours(
    model_admin: admin.ModelAdmin, request: HttpRequest, case: ReviewCase
) -> tuple[int | None, int | None]:
    """The previous and next case in the list the officer came from (scope and filters).

    The list's filters travel in `_changelist_filters` (Django's preserved filters); the
    list is rebuilt from them with the admin's scoped queryset, so a neighbour is always a
    case the officer may open.
    """
    listing = copy.copy(request)
    listing.GET = QueryDict(request.GET.get("_changelist_filters", ""))
    try:
        changelist: ChangeList = model_admin.get_changelist_instance(listing)
    except (IncorrectLookupParameters, SuspiciousOperation):  # a stale or hand-made filter
        return None, None
    ids = list(changelist.queryset.values_list("pk", flat=True)[:10_000])
    if case.pk not in ids:
        return None, None
    index = ids.index(case.pk)
    previous = ids[index - 1] if index > 0 else None
    following = ids[index + 1] if index + 1 < len(ids) else None
    return previous, following

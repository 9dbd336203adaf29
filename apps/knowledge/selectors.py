"""Which passages an employee may read, as SQL: retrieval filters inside the search query.

An audience is three string arrays (departments, userids, tags); all empty means everyone.
A document with an audience of its own replaces its knowledge base's audience. The
employee's departments and tags are read by subqueries on `DirectoryUser`, so the check
is part of the search statement itself, never a Python filter applied afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import F, Q, QuerySet, Subquery
from django.utils import timezone

from apps.knowledge.models import Chunk, DirectoryUser

_AUDIENCE_FIELDS = ("allowed_departments", "allowed_userids", "allowed_tags")


def _open_to_everyone(prefix: str) -> Q:
    return Q(**{f"{prefix}{field}": [] for field in _AUDIENCE_FIELDS})


def _admits(prefix: str, userid: str) -> Q:
    """The audience under `prefix` names the employee, one of their departments or tags.

    An employee missing from the directory has no departments or tags: the subqueries give
    NULL and `&&` with NULL is not true, so only audiences naming their userid admit them.
    """
    directory = DirectoryUser.objects.filter(userid=userid)
    return (
        Q(**{f"{prefix}allowed_userids__contains": [userid]})
        | Q(
            **{
                f"{prefix}allowed_departments__overlap": Subquery(
                    directory.values("departments")[:1]
                )
            }
        )
        | Q(**{f"{prefix}allowed_tags__overlap": Subquery(directory.values("tags")[:1])})
    )


def document_visible_q(*, userid: str | None, prefix: str = "") -> Q:
    """Documents (under `prefix`) the employee may read; no userid = the admin view, all."""
    if userid is None:
        return Q()
    kb = f"{prefix}kb__"
    inherits = _open_to_everyone(prefix) & (_open_to_everyone(kb) | _admits(kb, userid))
    return inherits | _admits(prefix, userid)


def chunks_searchable(*, kb_ids: Iterable[int], userid: str | None) -> QuerySet[Chunk]:
    """The active chunks of unexpired documents in these knowledge bases the employee may read.

    Only a document's active generation counts, so a re-index or a new version in progress
    never shows twice; the flip that changes it is atomic (see services.ingest).
    """
    today = timezone.localdate()
    return Chunk.objects.filter(
        document__kb_id__in=list(kb_ids),
        generation=F("document__active_generation"),
    ).filter(
        Q(document__expires_on__isnull=True) | Q(document__expires_on__gte=today),
        document_visible_q(userid=userid, prefix="document__"),
    )

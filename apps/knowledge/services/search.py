"""Searching the knowledge bases for a person (REST API, shell): who may search as whom.

Reading restricted knowledge beyond one's own audience (everything, or as another
employee) needs the `knowledge.search_all_audiences` permission, and each such search is
written to the access log before its results are returned; being staff grants nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction

from apps.audit.models import AccessLog
from apps.audit.services.access import access_log_record_many
from apps.audit.services.operator_audit import user_name
from apps.directory.selectors import Readers
from apps.knowledge.models import Chunk, KnowledgeBase
from apps.knowledge.services.retrieval import Hit, knowledge_retrieve

SEARCH_ALL_PERMISSION = "knowledge.search_all_audiences"
_QUERY_IN_LOG = 200


class SearchNotAllowed(Exception):
    """The user asked to search beyond their own audience without the permission."""


def search_readers(*, user: Any, userid: str | None) -> Readers:
    """Whose audience a search by `user` uses.

    With the permission: everything, or employee `userid`. Without it: the employee whose
    WeCom userid is the username (only their own audience, or none if the directory does
    not know them), and asking as anybody else is refused.
    """
    own = user.get_username()
    if user.has_perm(SEARCH_ALL_PERMISSION):
        return Readers.everything() if userid is None else Readers.employee(userid)
    if userid is not None and userid != own:
        raise SearchNotAllowed(userid)
    return Readers.employee(own)


def search_needs_reason(*, user: Any, readers: Readers) -> bool:
    """A search is access-logged (and needs a reason) unless it is the user's own audience."""
    return readers != Readers.employee(user_name(user)) if user_name(user) else True


def knowledge_search(
    *,
    user: Any,
    knowledge_bases: Sequence[KnowledgeBase],
    readers: Readers,
    query: str,
    top_k: int,
    reason: str = "",
) -> list[Hit]:
    """Search as `readers`; a search beyond the user's own audience is access-logged first.

    The log names every knowledge base searched (so a search that found nothing is still
    on record) and every passage returned, with the reason, the query and whose audience
    was used. It is written in one transaction before the results leave this function.
    """
    hits = knowledge_retrieve(
        bot_kb_ids=[kb.pk for kb in knowledge_bases], readers=readers, query=query, top_k=top_k
    )
    if not search_needs_reason(user=user, readers=readers):
        return hits
    if readers.unrestricted:
        scope = "all audiences"
    else:
        scope = "employee " + ", ".join(sorted(readers.userids)) if readers.userids else "public"
    logged_reason = f"{reason.strip()}\n\nknowledge search as {scope}: {query[:_QUERY_IN_LOG]}"
    chunks = Chunk.objects.select_related("document").in_bulk([hit.chunk_id for hit in hits])
    with transaction.atomic():
        access_log_record_many(
            user=user,
            objects=[*knowledge_bases, *(chunks[hit.chunk_id] for hit in hits)],
            action=AccessLog.Action.VIEW,
            reason=logged_reason,
        )
    return hits

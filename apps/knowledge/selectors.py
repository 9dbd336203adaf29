"""Which passages the readers of an answer may read, as SQL: retrieval filters inside the search.

A document with an audience of its own replaces its knowledge base's audience. How an
audience admits readers, and who the readers are (`Readers`), is the directory's
(`apps.directory.selectors`); the check is part of the search statement itself, never a
Python filter applied afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import F, Q, QuerySet
from django.utils import timezone

from apps.directory.selectors import (
    AudienceAdmitsAll,
    Readers,
    audience_admits_q,
    audience_open_q,
)
from apps.knowledge.models import Chunk


def document_visible_q(*, userid: str, prefix: str = "") -> Q:
    """Documents (under `prefix`) one employee may read (the unfiltered view is `Readers`')."""
    kb = f"{prefix}kb__"
    inherits = audience_open_q(prefix) & (audience_open_q(kb) | audience_admits_q(kb, userid))
    return inherits | audience_admits_q(prefix, userid)


def readers_visible_q(*, readers: Readers, prefix: str = "") -> Q:
    """Documents (under `prefix`) that every one of `readers` may read."""
    if readers.unrestricted:
        return Q()
    own_open, kb_open = audience_open_q(prefix), audience_open_q(f"{prefix}kb__")
    if readers.external:
        return own_open & Q(**{f"{prefix}kb__open_to_external": True})
    if not readers.userids:
        return own_open & kb_open
    if len(readers.userids) == 1:
        [userid] = readers.userids
        return document_visible_q(userid=userid, prefix=prefix)
    return (own_open & (kb_open | Q(AudienceAdmitsAll(f"{prefix}kb__", readers.userids)))) | (
        ~own_open & Q(AudienceAdmitsAll(prefix, readers.userids))
    )


def chunks_searchable(*, kb_ids: Iterable[int], readers: Readers) -> QuerySet[Chunk]:
    """The active, enabled chunks of unexpired documents in these knowledge bases the readers
    may read.

    Only a document's active generation counts, so a re-index or a new version in progress
    never shows twice; the flip that changes it is atomic (see services.ingest). A passage
    an admin disabled is left out of both the dense and the lexical list.
    """
    today = timezone.localdate()
    return Chunk.objects.filter(
        document__kb_id__in=list(kb_ids),
        generation=F("document__active_generation"),
        enabled=True,
    ).filter(
        Q(document__expires_on__isnull=True) | Q(document__expires_on__gte=today),
        readers_visible_q(readers=readers, prefix="document__"),
    )

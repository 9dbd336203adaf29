"""Which passages the readers of an answer may read, as SQL: retrieval filters inside the search.

An audience is three string arrays (departments, userids, tags); all empty means everyone.
A document with an audience of its own replaces its knowledge base's audience. The
readers' departments and tags are read by subqueries on `DirectoryUser`, so the check is
part of the search statement itself, never a Python filter applied afterwards.

Who reads is explicit (`Readers`): one employee, every member of a group chat, the public
(only what is open to everyone), or, for holders of the search permission, everything.
There is no implicit "no user means no filter".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import BooleanField, Expression, F, Q, QuerySet, Subquery
from django.utils import timezone

from apps.knowledge.models import Chunk, DirectoryUser

_AUDIENCE_FIELDS = ("allowed_departments", "allowed_userids", "allowed_tags")


@dataclass(frozen=True)
class Readers:
    """Everyone who will read what a search finds; a passage must be open to all of them.

    `userids` empty and not `unrestricted` is the public: only knowledge open to everyone.
    """

    userids: frozenset[str] = frozenset()
    unrestricted: bool = False

    @classmethod
    def everything(cls) -> Readers:
        """No audience filter: for holders of `knowledge.search_all_audiences` only."""
        return cls(unrestricted=True)

    @classmethod
    def public(cls) -> Readers:
        return cls()

    @classmethod
    def employee(cls, userid: str) -> Readers:
        return cls(userids=frozenset({userid}))

    @classmethod
    def members(cls, userids: Iterable[str]) -> Readers:
        return cls(userids=frozenset(userids))


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


class _AdmitsAll(Expression):
    """True when the audience under `prefix` admits every one of `userids`.

    One `NOT EXISTS` over the readers (joined to the directory) instead of one subquery per
    reader, so a group of hundreds stays one small statement. Readers missing from the
    directory are admitted only by their userid, as `_admits` does for one employee.
    """

    conditional = True

    def __init__(self, prefix: str, userids: Iterable[str]) -> None:
        super().__init__(output_field=BooleanField())
        self.userids = sorted(userids)
        self.audience = [F(f"{prefix}{field}") for field in _AUDIENCE_FIELDS]

    def get_source_expressions(self) -> list[Any]:
        return self.audience

    def set_source_expressions(self, exprs: list[Any]) -> None:
        self.audience = list(exprs)

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        compiled = [compiler.compile(expression) for expression in self.audience]
        (departments, department_params), (users, user_params), (tags, tag_params) = compiled
        directory = connection.ops.quote_name(DirectoryUser._meta.db_table)
        # Only compiled column references and a quoted table name are interpolated; the
        # userids travel as a parameter.
        sql = (
            "NOT EXISTS (SELECT 1 FROM unnest(%s::varchar[]) AS reader(userid) "  # noqa: S608
            f"LEFT JOIN {directory} AS reader_dir ON reader_dir.userid = reader.userid "
            f"WHERE NOT (reader.userid = ANY({users}) "
            f"OR COALESCE(reader_dir.departments && {departments}, false) "
            f"OR COALESCE(reader_dir.tags && {tags}, false)))"
        )
        return sql, [self.userids, *user_params, *department_params, *tag_params]


def document_visible_q(*, userid: str, prefix: str = "") -> Q:
    """Documents (under `prefix`) one employee may read (the unfiltered view is `Readers`')."""
    kb = f"{prefix}kb__"
    inherits = _open_to_everyone(prefix) & (_open_to_everyone(kb) | _admits(kb, userid))
    return inherits | _admits(prefix, userid)


def readers_visible_q(*, readers: Readers, prefix: str = "") -> Q:
    """Documents (under `prefix`) that every one of `readers` may read."""
    if readers.unrestricted:
        return Q()
    own_open, kb_open = _open_to_everyone(prefix), _open_to_everyone(f"{prefix}kb__")
    if not readers.userids:
        return own_open & kb_open
    if len(readers.userids) == 1:
        [userid] = readers.userids
        return document_visible_q(userid=userid, prefix=prefix)
    return (own_open & (kb_open | Q(_AdmitsAll(f"{prefix}kb__", readers.userids)))) | (
        ~own_open & Q(_AdmitsAll(prefix, readers.userids))
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

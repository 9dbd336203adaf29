"""Who reads an answer, and whether an audience admits them.

An audience is three string arrays (departments, userids, tags) on the row it guards; all
empty means everyone. The readers' departments and tags are read by subqueries on
`DirectoryUser`, so a caller's query checks the audience inside its own statement. Who
reads is explicit (`Readers`): one employee, every member of a group chat, the public
(only what is open to everyone), or, for holders of a search permission, everything.
There is no implicit "no user means no filter".

The asker reads an answer in a 1:1 chat; in a group chat all its members do, so retrieval
there is filtered for all of them at once. Membership comes from `GroupChat`, a list an
admin registers: WeCom gives an AI bot no API listing a group's members, and the userids
seen speaking miss the silent ones. Without a trustworthy list the group is treated as the public.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import BooleanField, Expression, F, Q, Subquery

from apps.directory.models import DirectoryUser, GroupChat

logger = logging.getLogger(__name__)

AUDIENCE_FIELDS = ("allowed_departments", "allowed_userids", "allowed_tags")


@dataclass(frozen=True)
class Readers:
    """Everyone who will read what a search finds; a passage must be open to all of them.

    `userids` empty and not `unrestricted` is the public: only knowledge open to everyone.
    `external` is someone outside the company: only knowledge bases an admin opened to
    external users, and there only documents without an audience of their own.
    """

    userids: frozenset[str] = frozenset()
    unrestricted: bool = False
    external: bool = False

    @classmethod
    def everything(cls) -> Readers:
        """No audience filter: for holders of `knowledge.search_all_audiences` only."""
        return cls(unrestricted=True)

    @classmethod
    def public(cls) -> Readers:
        return cls()

    @classmethod
    def outsider(cls) -> Readers:
        """A WeChat customer, follower, mini-program user or API key: never the directory."""
        return cls(external=True)

    @classmethod
    def employee(cls, userid: str) -> Readers:
        return cls(userids=frozenset({userid}))

    @classmethod
    def members(cls, userids: Iterable[str]) -> Readers:
        return cls(userids=frozenset(userids))


def audience_open_q(prefix: str) -> Q:
    return Q(**{f"{prefix}{field}": [] for field in AUDIENCE_FIELDS})


def audience_admits_q(prefix: str, userid: str) -> Q:
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


class AudienceAdmitsAll(Expression):
    """True when the audience under `prefix` admits every one of `userids`.

    One `NOT EXISTS` over the readers (joined to the directory) instead of one subquery per
    reader, so a group of hundreds stays one small statement. Readers missing from the
    directory are admitted only by their userid, as `audience_admits_q` does for one employee.
    """

    conditional = True

    def __init__(self, prefix: str, userids: Iterable[str]) -> None:
        super().__init__(output_field=BooleanField())
        self.userids = sorted(userids)
        self.audience = [F(f"{prefix}{field}") for field in AUDIENCE_FIELDS]

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


def chat_readers(*, userid: str, chat_id: str, group: bool) -> Readers:
    """The readers of an answer to `userid` in this chat.

    In a group the registered member list is used only if it contains the asker: a list
    missing the person speaking is stale, and may miss others too, so the group then gets
    only knowledge open to everyone, like a group nobody registered.
    """
    if not group:
        return Readers.employee(userid)
    members = (
        GroupChat.objects.filter(chat_id=chat_id).values_list("member_userids", flat=True).first()
        if chat_id
        else None
    )
    if not members:
        return Readers.public()
    if userid not in members:
        logger.warning(
            "group chat %s: asker %s is not in its registered members; "
            "answering from knowledge open to everyone only",
            chat_id,
            userid,
        )
        return Readers.public()
    return Readers.members(members)


def directory_departments() -> list[str]:
    """Every department label some employee has, sorted: the choices of department filters."""
    table = connection.ops.quote_name(DirectoryUser._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT DISTINCT unnest(departments) AS d FROM {table} ORDER BY d")  # noqa: S608
        return [row[0] for row in cursor.fetchall()]

"""The employee directory that audiences are checked against: manual edits and WeCom sync.

`directory_sync` reads WeCom's contact API (`/cgi-bin/gettoken`, `/cgi-bin/department/list`,
`/cgi-bin/user/list`) under `settings.WECOM_API_BASE` with the Django-free
`wecom.contacts.ContactClient`, its token kept in Django's cache. An employee's departments
are stored as names *and* ids, each with its parent departments, so an audience naming a
department also admits the people in its sub-departments.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from apps.directory.models import DirectoryUser
from wecom.contacts import ContactClient

logger = logging.getLogger(__name__)


def contact_client_from_settings() -> ContactClient:
    """Credentials from settings or the environment (`WECOM_CORP_ID`, `WECOM_CONTACT_SECRET`)."""
    return ContactClient(
        corp_id=_configured("WECOM_CORP_ID"),
        secret=_configured("WECOM_CONTACT_SECRET"),
        base_url=settings.WECOM_API_BASE,
        token_cache=cache,
    )


def _configured(name: str) -> str:
    value = getattr(settings, name, "") or os.environ.get(name, "")
    file_name = os.environ.get(f"{name}_FILE")
    if not value and file_name:
        with open(file_name) as handle:
            value = handle.read().strip()
    return str(value)


@dataclass(frozen=True)
class SyncResult:
    departments: int
    created: int
    updated: int
    removed: int


def directory_sync(*, client: ContactClient | None = None, prune: bool = True) -> SyncResult:
    """Mirror WeCom's directory into `DirectoryUser`; with `prune`, drop people who left.

    Everything is fetched before anything is written, so a failed sync changes nothing.
    """
    own_client = client is None
    client = client or contact_client_from_settings()
    try:
        departments = client.departments()
        people: dict[str, dict[str, Any]] = {}
        for department in departments:
            for person in client.users(department_id=int(department["id"])):
                merged = people.setdefault(person["userid"], {**person, "department": []})
                merged["department"] = sorted(
                    {*merged["department"], *person.get("department", [department["id"]])}
                )
    finally:
        if own_client:
            client.close()
    labels = _department_labels(departments)
    created = updated = 0
    with transaction.atomic():
        existing = {user.userid: user for user in DirectoryUser.objects.select_for_update()}
        for userid, person in people.items():
            names = _labels_for(person["department"], labels)
            user = existing.get(userid)
            if user is None:
                DirectoryUser.objects.create(
                    userid=userid, name=person.get("name", ""), departments=names
                )
                created += 1
            elif user.name != person.get("name", user.name) or user.departments != names:
                user.name = person.get("name", user.name)
                user.departments = names
                user.save(update_fields=["name", "departments", "updated_at"])
                updated += 1
        removed = 0
        if prune:
            removed, _ = DirectoryUser.objects.exclude(userid__in=list(people)).delete()
    logger.info(
        "directory sync: %s departments, %s people (%s new, %s changed, %s removed)",
        len(departments), len(people), created, updated, removed,
    )  # fmt: skip
    return SyncResult(
        departments=len(departments), created=created, updated=updated, removed=removed
    )


def _department_labels(departments: Iterable[dict[str, Any]]) -> dict[int, list[str]]:
    """For each department id: its name and id, then those of every parent up to the root."""
    by_id = {int(d["id"]): d for d in departments}
    labels: dict[int, list[str]] = {}
    for department_id in by_id:
        chain: list[str] = []
        seen: set[int] = set()
        current: int | None = department_id
        while current in by_id and current not in seen:
            seen.add(current)
            department = by_id[current]
            chain += [str(department.get("name", "")).strip(), str(current)]
            current = int(department.get("parentid", 0) or 0) or None
        labels[department_id] = [label for label in chain if label]
    return labels


def _labels_for(department_ids: Iterable[int], labels: dict[int, list[str]]) -> list[str]:
    names: list[str] = []
    for department_id in department_ids:
        for label in labels.get(int(department_id), [str(department_id)]):
            if label not in names:
                names.append(label)
    return names


def directory_user_save(
    *,
    userid: str,
    name: str | None = None,
    departments: list[str] | None = None,
    tags: list[str] | None = None,
) -> tuple[DirectoryUser, bool]:
    """Create or update one employee by hand; None leaves a field as it is."""
    user, created = DirectoryUser.objects.get_or_create(userid=userid)
    if name is not None:
        user.name = name
    if departments is not None:
        user.departments = list(dict.fromkeys(d.strip() for d in departments if d.strip()))
    if tags is not None:
        user.tags = list(dict.fromkeys(t.strip() for t in tags if t.strip()))
    user.save()
    return user, created

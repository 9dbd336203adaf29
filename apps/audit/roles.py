"""Role presets: four groups an admin gives people on the user page instead of picking among
130 raw permissions (README, "Admin role presets").

Review scope is not part of any role: an officer sees nothing until assigned bots or
archive sources on the Officer assignments page, and no preset may assign officers (that
would let a role widen its own scope).

The groups are seeded after `migrate` (like Django's own permissions), not by a data
migration: a database flush (the test suite's, or an operator's) would otherwise lose them
for good. A preset that exists is left as it is, so an admin's changes to it stay.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.db import DEFAULT_DB_ALIAS

CRUD = ("add", "change", "delete", "view")

ROLE_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    # Runs the platform: bots, model profiles, the directory, archive sources and policies,
    # and people's accounts; reads no transcript, case or archived message.
    "IT admin": {
        "bots": (*(f"{a}_bot" for a in CRUD), *(f"{a}_botvariant" for a in CRUD)),
        "inference": (*(f"{a}_modelprofile" for a in CRUD),),
        "directory": (
            *(f"{a}_directoryuser" for a in CRUD),
            *(f"{a}_groupchat" for a in CRUD),
        ),
        "audit": (
            *(f"{a}_archivesource" for a in ("add", "change", "view")),
            *(f"{a}_archivekey" for a in ("add", "change", "view")),
            *(f"{a}_auditpolicy" for a in CRUD),
            *(f"{a}_sensitivewordlist" for a in CRUD),
            *(f"{a}_policywordlist" for a in CRUD),
            *(f"{a}_regexrule" for a in CRUD),
        ),
        "auth": ("add_user", "change_user", "view_user", "view_group"),
    },
    # Curates knowledge bases and documents, and checks what a given employee would find.
    "Knowledge editor": {
        "knowledge": (
            *(f"{a}_knowledgebase" for a in CRUD),
            *(f"{a}_document" for a in CRUD),
            "view_chunk",
            "change_chunk",
            "search_all_audiences",
        ),
        "directory": ("view_directoryuser", "view_groupchat"),
    },
    # Reviews the cases, transcripts and archived messages of the bots and sources assigned
    # to them (nothing before an assignment), decides and exports.
    "Compliance officer": {
        "audit": (
            "view_reviewcase",
            "decide_reviewcase",
            "export_reviewcase",
            "view_archivedmessage",
            "export_archivedmessage",
            "view_archivequarantine",
        ),
        "bots": ("view_conversation", "view_turn"),
    },
    # Reads the audit trail and the configuration it refers to; changes nothing.
    "Auditor": {
        "audit": (
            "view_accesslog",
            "view_operatorauditentry",
            "view_ledgerentry",
            "view_ledgercheckpoint",
            "view_auditpolicy",
            "view_sensitivewordlist",
            "view_policywordlist",
            "view_regexrule",
            "view_archivesource",
        ),
        "auth": ("view_user", "view_group"),
    },
}


def role_presets_ensure(*, apps: Any = global_apps, using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Create the preset groups that are missing, with their permissions; their names."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    missing = [
        name for name in ROLE_PRESETS if not Group.objects.using(using).filter(name=name).exists()
    ]
    if not missing:
        return []
    # Permissions of apps migrated after this one may not exist yet.
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using, apps=apps)
    for name in missing:
        group = Group.objects.using(using).create(name=name)
        group.permissions.set(
            [
                Permission.objects.using(using).get(
                    content_type__app_label=app_label, codename=codename
                )
                for app_label, codenames in ROLE_PRESETS[name].items()
                for codename in codenames
            ]
        )
    return missing


def post_migrate_role_presets(
    *, using: str = DEFAULT_DB_ALIAS, apps: Any = global_apps, **_: Any
) -> None:
    role_presets_ensure(apps=apps, using=using)

"""Role presets: four groups an admin gives people on the user page instead of picking among
130 raw permissions (README, "Admin role presets").

Review scope is not part of any role: an officer sees nothing until assigned bots or
archive sources on the Officer assignments page, and no preset may assign officers (that
would let a role widen its own scope). Permissions are created here first because Django
creates them only after all migrations have run.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

CRUD = ("add", "change", "delete", "view")

ROLE_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    # Runs the platform: bots, model profiles, the directory, archive sources and policies,
    # and people's accounts; reads no transcript, case or archived message.
    "IT admin": {
        "bots": (*(f"{a}_bot" for a in CRUD),),
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


def _permissions_create(apps):
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None


def presets_create(apps, schema_editor):
    _permissions_create(apps)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, grants in ROLE_PRESETS.items():
        group, _created = Group.objects.get_or_create(name=name)
        wanted = [
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
            for app_label, codenames in grants.items()
            for codename in codenames
        ]
        group.permissions.set(wanted)


def presets_delete(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLE_PRESETS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0008_llm_review_model_in_inference"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("bots", "0008_bot_long_connection"),
        ("inference", "0001_initial"),
        ("directory", "0001_initial"),
        ("knowledge", "0008_document_ingest_progress_passage_enabled"),
    ]

    operations = [migrations.RunPython(presets_create, presets_delete)]

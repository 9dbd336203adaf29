"""Create `bots.review_bot`, the object permission that assigns an officer to a bot.

It belongs to the Bot content type (guardian needs that for object permissions) but is
owned by the audit app, which is why it is created here and not in the bots app's Meta.
`apps.audit.services.review.review_bot_permission` recreates it if a flush removed it.
"""

from django.db import migrations


def create_permission(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    content_type, _ = ContentType.objects.get_or_create(app_label="bots", model="bot")
    Permission.objects.get_or_create(
        content_type=content_type,
        codename="review_bot",
        defaults={"name": "Can review cases and transcripts of this bot"},
    )


def delete_permission(apps, schema_editor):
    Permission = apps.get_model("auth", "Permission")
    Permission.objects.filter(content_type__app_label="bots", codename="review_bot").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0002_ledger_triggers"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("bots", "0001_bots_conversations_turns"),
    ]

    operations = [migrations.RunPython(create_permission, delete_permission)]

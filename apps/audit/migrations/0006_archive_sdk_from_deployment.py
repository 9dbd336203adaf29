"""The vendor SDK path leaves the database: which library the archive workers load is
deployment configuration (ARCHIVE_SDK_LIBRARY), never a form field."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0005_audit_policy_llm_review_model"),
    ]

    operations = [
        migrations.RemoveField(
            model_name="archivesource",
            name="sdk_library_path",
        ),
    ]

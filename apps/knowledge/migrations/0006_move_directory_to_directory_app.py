"""`DirectoryUser` and `GroupChat` now belong to the directory app (its 0001 took them over
with their tables and content types); here they only leave this app's state."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0005_embedding_profile_in_inference"),
        ("directory", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="DirectoryUser"),
                migrations.DeleteModel(name="GroupChat"),
            ],
            database_operations=[],
        ),
    ]

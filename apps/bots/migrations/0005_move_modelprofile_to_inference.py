"""`ModelProfile` now belongs to the inference app (its 0001 took it over with its table and
content type): bots point at it there, and it leaves this app's state.

It runs after knowledge's and audit's foreign keys moved, so that no state still refers to
`bots.ModelProfile` once it is gone.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("bots", "0004_model_profile_slots_bot_queue_notice"),
        ("inference", "0001_initial"),
        ("knowledge", "0005_embedding_profile_in_inference"),
        ("audit", "0008_llm_review_model_in_inference"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="bot",
                    name="model_profile",
                    field=models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="bots", to="inference.modelprofile", verbose_name="model"),
                ),
                migrations.DeleteModel(name="ModelProfile"),
            ],
            database_operations=[],
        ),
    ]

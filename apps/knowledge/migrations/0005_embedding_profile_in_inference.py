"""Knowledge bases' embedding model now points at `inference.ModelProfile`.

State only: the table the foreign key references (`bots_modelprofile`) did not move.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0004_embedding_index_function"),
        ("inference", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="knowledgebase",
                    name="embedding_profile",
                    field=models.ForeignKey(blank=True, help_text="The model that turns passages and questions into vectors; empty = the default model. Changing it requires re-indexing every document.", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="knowledge_bases", to="inference.modelprofile", verbose_name="embedding model"),
                ),
            ],
            database_operations=[],
        ),
    ]

"""Audit policies' LLM review model now points at `inference.ModelProfile`.

State only: the table the foreign key references (`bots_modelprofile`) did not move.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0007_ledger_anchor_mac"),
        ("inference", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="auditpolicy",
                    name="llm_review_model",
                    field=models.ForeignKey(blank=True, help_text="The model that reviews archived conversations; empty = the first model profile. Pick a larger model than the small default for judgement worth trusting.", null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="inference.modelprofile", verbose_name="LLM review model"),
                ),
            ],
            database_operations=[],
        ),
    ]

"""Knowledge bases choose their embedder; existing ones keep the llama.cpp model they had.

The field is added with default "gguf" so every existing row keeps its current vectors
(and its embedding profile), then the default becomes the bundled encoder for new rows.
The vector width each knowledge base serves is copied from its searchable passages.
"""

from django.db import migrations, models

CHOICES = [
    ("use-multilingual-v3", "bundled multilingual sentence encoder"),
    ("gguf", "llama.cpp GGUF model (embedding model below)"),
]
HELP = (
    "What turns passages and questions into vectors. The bundled encoder works on any "
    "machine and across Chinese and English; changing it re-indexes every document in "
    "the background while the old vectors keep serving."
)


def dimensions_fill(apps, schema_editor):
    KnowledgeBase = apps.get_model("knowledge", "KnowledgeBase")
    Chunk = apps.get_model("knowledge", "Chunk")
    for kb in KnowledgeBase.objects.all():
        width = (
            Chunk.objects.filter(document__kb=kb)
            .values_list("embedding_dimensions", flat=True)
            .first()
        )
        if width:
            KnowledgeBase.objects.filter(pk=kb.pk).update(embedding_dimensions=width)


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0006_move_directory_to_directory_app"),
    ]

    operations = [
        migrations.AddField(
            model_name="knowledgebase",
            name="embedder",
            field=models.CharField(
                choices=CHOICES,
                default="gguf",
                help_text=HELP,
                max_length=40,
                verbose_name="embedder",
            ),
        ),
        migrations.AlterField(
            model_name="knowledgebase",
            name="embedder",
            field=models.CharField(
                choices=CHOICES,
                default="use-multilingual-v3",
                help_text=HELP,
                max_length=40,
                verbose_name="embedder",
            ),
        ),
        migrations.AddField(
            model_name="knowledgebase",
            name="embedding_dimensions",
            field=models.PositiveSmallIntegerField(
                blank=True, editable=False, null=True, verbose_name="vector dimensions"
            ),
        ),
        migrations.AddField(
            model_name="knowledgebase",
            name="embedding_model",
            field=models.CharField(blank=True, default="", editable=False, max_length=600),
        ),
        migrations.RunPython(dimensions_fill, migrations.RunPython.noop),
        # The bundled encoder's width, so new knowledge bases find their index in place.
        migrations.RunSQL(
            'CREATE INDEX IF NOT EXISTS "chunk_embedding_hnsw_512" ON "knowledge_chunk" '
            'USING hnsw ((("embedding")::vector(512)) vector_cosine_ops) '
            'WITH (m = 16, ef_construction = 64) WHERE "embedding_dimensions" = 512',
            'DROP INDEX IF EXISTS "chunk_embedding_hnsw_512"',
        ),
    ]

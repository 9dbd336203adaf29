"""`ModelProfile` moves here from the bots app and keeps its table, `bots_modelprofile`.

State only: the row data, the foreign keys of bots, knowledge bases and audit policies
(altered in their apps' next migrations) and the content type (relabelled below, with its
permissions, guardian object permissions and admin log entries) all stay as they are.
"""

import django.core.validators
from django.db import migrations, models


def _content_types_move(apps, schema_editor, *, models, old, new):
    """Relabel the content type rows in place, so that everything pointing at them (model
    and object permissions, admin log entries) follows the models to their new app."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    for model in models:
        moving = ContentType.objects.using(db).filter(app_label=old, model=model).first()
        if moving is None:
            continue  # a fresh database: post_migrate creates the row under the new label
        # A row already under the new label can only be one that post_migrate made, with no
        # permissions or log entries of its own: it gives way to the row that has them.
        ContentType.objects.using(db).filter(app_label=new, model=model).delete()
        moving.app_label = new
        moving.save(using=db, update_fields=["app_label"])
    ContentType.objects.clear_cache()


MODELS = ("modelprofile",)


def content_types_forward(apps, schema_editor):
    _content_types_move(apps, schema_editor, models=MODELS, old="bots", new="inference")


def content_types_backward(apps, schema_editor):
    _content_types_move(apps, schema_editor, models=MODELS, old="inference", new="bots")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ('bots', '0004_model_profile_slots_bot_queue_notice'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        # The tables stay where they are; only Django's idea of which app owns them moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='ModelProfile',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.CharField(max_length=100, unique=True, verbose_name='name')),
                        ('gguf_path', models.CharField(help_text='Absolute path of the .gguf file. The admin checks it here; inference workers load it from the same path, so mount the models folder on both.', max_length=500, verbose_name='GGUF path')),
                        ('context_size', models.PositiveIntegerField(default=4096, help_text='Tokens of context (prompt plus answer) per conversation.', validators=[django.core.validators.MinValueValidator(256), django.core.validators.MaxValueValidator(1048576)], verbose_name='context size')),
                        ('n_gpu_layers', models.IntegerField(default=0, help_text='Layers offloaded to the GPU: -1 = all layers (needs a CUDA build of llama-cpp-python), 0 = CPU only.', validators=[django.core.validators.MinValueValidator(-1)], verbose_name='GPU layers')),
                        ('threads', models.PositiveSmallIntegerField(blank=True, help_text="CPU threads for decoding; empty = llama.cpp's default.", null=True, validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(512)], verbose_name='threads')),
                        ('batch_size', models.PositiveIntegerField(default=512, validators=[django.core.validators.MinValueValidator(8), django.core.validators.MaxValueValidator(65536)], verbose_name='batch size')),
                        ('slots', models.PositiveSmallIntegerField(default=4, help_text='Conversations each inference worker decodes together in one batch. More slots raise total throughput at some cost per answer; each slot reserves a context window of KV cache memory. 1 = one answer at a time.', validators=[django.core.validators.MinValueValidator(1), django.core.validators.MaxValueValidator(64)], verbose_name='parallel conversations')),
                        ('prefix_cache_size', models.PositiveSmallIntegerField(default=2, help_text='Finished prompts kept in memory so that a follow-up question, or another chat with the same system prompt, starts without recomputing them. Each costs a context window of KV cache memory. Used only with more than one slot.', validators=[django.core.validators.MaxValueValidator(32)], verbose_name='cached prompts')),
                        ('temperature', models.FloatField(default=0.7, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(2)], verbose_name='temperature')),
                        ('top_p', models.FloatField(default=0.95, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1)], verbose_name='top-p')),
                        ('top_k', models.PositiveIntegerField(default=40, verbose_name='top-k')),
                        ('min_p', models.FloatField(default=0.05, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(1)], verbose_name='min-p')),
                        ('repeat_penalty', models.FloatField(default=1.1, validators=[django.core.validators.MinValueValidator(0), django.core.validators.MaxValueValidator(5)], verbose_name='repeat penalty')),
                        ('chat_format', models.CharField(blank=True, help_text='llama-cpp-python chat format name; empty = the template inside the GGUF.', max_length=50, verbose_name='chat format')),
                        ('chat_template', models.TextField(blank=True, help_text="A Jinja chat template that replaces the model's own; empty = none.", verbose_name='chat template override')),
                        ('created_at', models.DateTimeField(auto_now_add=True, verbose_name='created')),
                        ('updated_at', models.DateTimeField(auto_now=True, verbose_name='updated')),
                    ],
                    options={
                        'verbose_name': 'model profile',
                        'verbose_name_plural': 'model profiles',
                        'db_table': 'bots_modelprofile',
                        'ordering': ['name'],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_forward, content_types_backward),
    ]

"""`DirectoryUser` and `GroupChat` move here from the knowledge app and keep their tables,
`knowledge_directoryuser` and `knowledge_groupchat`.

State only: the rows stay, and their content types are relabelled below, so permissions and
admin log entries follow. Nothing holds a foreign key to them (audiences name userids).
"""

import django.contrib.postgres.fields
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


MODELS = ("directoryuser", "groupchat")


def content_types_forward(apps, schema_editor):
    _content_types_move(apps, schema_editor, models=MODELS, old="knowledge", new="directory")


def content_types_backward(apps, schema_editor):
    _content_types_move(apps, schema_editor, models=MODELS, old="directory", new="knowledge")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ('knowledge', '0004_embedding_index_function'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        # The tables stay where they are; only Django's idea of which app owns them moves.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='DirectoryUser',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('userid', models.CharField(max_length=64, unique=True, verbose_name='WeCom userid')),
                        ('name', models.CharField(blank=True, max_length=100, verbose_name='name')),
                        ('departments', django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=100), blank=True, default=list, help_text='Department names or ids, comma-separated.', size=None, verbose_name='departments')),
                        ('tags', django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=100), blank=True, default=list, size=None, verbose_name='tags')),
                        ('updated_at', models.DateTimeField(auto_now=True, verbose_name='updated')),
                    ],
                    options={
                        'verbose_name': 'directory user',
                        'verbose_name_plural': 'directory users',
                        'db_table': 'knowledge_directoryuser',
                        'ordering': ['userid'],
                    },
                ),
                migrations.CreateModel(
                    name='GroupChat',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('chat_id', models.CharField(max_length=128, unique=True, verbose_name='WeCom chat id')),
                        ('name', models.CharField(blank=True, max_length=100, verbose_name='name')),
                        ('member_userids', django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=64), help_text='The WeCom userids of everyone in the group, comma-separated. Answers in this group use only passages every member may read; a list that misses someone would let them read what they may not, so keep it complete.', size=2000, verbose_name='members')),
                        ('updated_at', models.DateTimeField(auto_now=True, verbose_name='updated')),
                    ],
                    options={
                        'verbose_name': 'group chat',
                        'verbose_name_plural': 'group chats',
                        'db_table': 'knowledge_groupchat',
                        'ordering': ['chat_id'],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_forward, content_types_backward),
    ]

"""Moving models to the inference and directory apps keeps the data (issue 10).

Starting from the schema before the move, rows made there (a model profile with a guardian
object permission and an admin log entry, the bot, knowledge base and audit policy pointing
at it, directory users a knowledge base's audience admits, a group chat) must come through
the forward migration unchanged and usable through the new apps' models. Migrations run as
the tables' owner, like `make run` runs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.conftest import as_database_owner

# Unapplying the new apps' first migrations unapplies every move migration that needs them.
BEFORE_THE_MOVE = [("inference", None), ("directory", None)]


def _migrate(targets: list[tuple[str, str | None]] | None = None) -> Any:
    """Migrate to `targets` (default: every app's latest) and return the historical apps of
    the migrations now applied."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets or executor.loader.graph.leaf_nodes())
    applied = MigrationExecutor(connection)
    return applied._create_project_state(with_applied_migrations=True).apps


@pytest.fixture
def before_the_move(transactional_db: None) -> Iterator[Any]:
    """The schema as it was before the move, migrated forward again whatever the test does."""
    with as_database_owner():
        try:
            yield _migrate(BEFORE_THE_MOVE)
        finally:
            _migrate()
    from django.contrib.contenttypes.models import ContentType

    ContentType.objects.clear_cache()


def _rows_before_the_move(old: Any) -> dict[str, Any]:
    """Rows made with the historical models, where the moved models still live in bots and
    knowledge."""
    ContentType = old.get_model("contenttypes", "ContentType")
    Permission = old.get_model("auth", "Permission")
    profile_type = ContentType.objects.get(app_label="bots", model="modelprofile")
    directory_type = ContentType.objects.get(app_label="knowledge", model="directoryuser")
    assert not ContentType.objects.filter(app_label__in=["inference", "directory"]).exists()

    user = old.get_model("auth", "User").objects.create(username="ops", is_staff=True)
    profile = old.get_model("bots", "ModelProfile").objects.create(
        name="big", gguf_path="/models/big.gguf"
    )
    old.get_model("guardian", "UserObjectPermission").objects.create(
        user=user,
        permission=Permission.objects.get(
            content_type=profile_type, codename="change_modelprofile"
        ),
        content_type=profile_type,
        object_pk=str(profile.pk),
    )
    user.user_permissions.add(
        Permission.objects.get(content_type=directory_type, codename="view_directoryuser")
    )
    log = old.get_model("admin", "LogEntry").objects.create(
        user=user,
        content_type=profile_type,
        object_id=str(profile.pk),
        object_repr="big",
        action_flag=2,
        change_message="[]",
    )
    bot = old.get_model("bots", "Bot").objects.create(
        name="HR", slug="hr", token="t", encoding_aes_key="k", model_profile=profile
    )
    kb = old.get_model("knowledge", "KnowledgeBase").objects.create(
        name="HR", slug="hr", embedding_profile=profile, allowed_departments=["HR"]
    )
    policy = old.get_model("audit", "AuditPolicy").objects.create(
        name="review", llm_review_model=profile
    )
    old.get_model("knowledge", "DirectoryUser").objects.create(
        userid="alice", name="Alice", departments=["HR"], tags=["manager"]
    )
    old.get_model("knowledge", "GroupChat").objects.create(
        chat_id="g1", member_userids=["alice", "bob"]
    )
    return {
        "user": user.pk,
        "profile": profile.pk,
        "profile_type": profile_type.pk,
        "directory_type": directory_type.pk,
        "log": log.pk,
        "bot": bot.pk,
        "kb": kb.pk,
        "policy": policy.pk,
    }


def test_the_moves_keep_rows_foreign_keys_and_permissions(before_the_move: Any) -> None:
    # Given rows made before the move
    made = _rows_before_the_move(before_the_move)

    # When the database is migrated forward
    with as_database_owner():
        _migrate()
    from django.contrib.admin.models import LogEntry
    from django.contrib.auth.models import User
    from django.contrib.contenttypes.models import ContentType
    from guardian.core import ObjectPermissionChecker

    from apps.audit.models import AuditPolicy
    from apps.bots.models import Bot
    from apps.directory.models import DirectoryUser, GroupChat
    from apps.directory.selectors import Readers, audience_admits_q, chat_readers
    from apps.inference.models import ModelProfile
    from apps.knowledge.models import KnowledgeBase

    ContentType.objects.clear_cache()

    # Then the model profile and everything pointing at it came along
    profile = ModelProfile.objects.get(pk=made["profile"])
    assert profile.name == "big"
    assert Bot.objects.get(pk=made["bot"]).model_profile == profile
    assert KnowledgeBase.objects.get(pk=made["kb"]).embedding_profile == profile
    assert AuditPolicy.objects.get(pk=made["policy"]).llm_review_model == profile
    # with its content type relabelled in place, so permissions and log entries still hold
    profile_type = ContentType.objects.get_for_model(ModelProfile)
    assert (profile_type.pk, profile_type.app_label) == (made["profile_type"], "inference")
    user = User.objects.get(pk=made["user"])
    assert ObjectPermissionChecker(user).has_perm("change_modelprofile", profile)
    assert user.has_perm("inference.change_modelprofile", profile)
    assert not user.has_perm("inference.delete_modelprofile", profile)
    assert LogEntry.objects.get(pk=made["log"]).get_edited_object() == profile

    # And the directory's rows answer the audience questions from their new app
    directory_type = ContentType.objects.get_for_model(DirectoryUser)
    assert (directory_type.pk, directory_type.app_label) == (made["directory_type"], "directory")
    assert user.has_perm("directory.view_directoryuser")
    alice = DirectoryUser.objects.get(userid="alice")
    assert (alice.name, alice.departments, alice.tags) == ("Alice", ["HR"], ["manager"])
    assert GroupChat.objects.get(chat_id="g1").member_userids == ["alice", "bob"]
    assert chat_readers(userid="alice", chat_id="g1", group=True) == Readers.members(
        ["alice", "bob"]
    )
    admitted = KnowledgeBase.objects.filter(audience_admits_q("", "alice"))
    assert list(admitted.values_list("pk", flat=True)) == [made["kb"]]
    assert not KnowledgeBase.objects.filter(audience_admits_q("", "bob")).exists()
    assert not ContentType.objects.filter(app_label="bots", model="modelprofile").exists()

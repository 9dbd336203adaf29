"""Operator audit is written by the services, so every door is audited the same way.

Each service writes exactly one entry with the actor, the object and the changed fields, in
the transaction of the change. Commands record the user named by `--actor`, or the system
label `system:<command>`; the admin passes the signed-in user. Secrets never appear.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.audit.models import (
    ArchiveSource,
    AuditPolicy,
    OperatorAuditEntry,
    PolicyWordList,
    SensitiveWordList,
)
from apps.audit.services.accounts import superuser_ensure, user_save
from apps.audit.services.configuration import archive_source_save, policy_save
from apps.audit.services.operator_audit import SystemActor, command_actor
from apps.audit.services.policy import word_list_save
from apps.bots.models import Bot
from apps.bots.services.config import (
    bot_credentials_set,
    bot_delete,
    bot_save,
    model_profile_save,
)
from apps.inference.models import ModelProfile
from apps.knowledge.models import Document, KnowledgeBase
from apps.knowledge.services.config import (
    document_delete,
    document_save,
    document_upload,
    documents_reindex,
    knowledge_base_ensure,
    knowledge_base_save,
)
from wecom.crypto import generate_encoding_aes_key

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _media(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


@pytest.fixture
def operator() -> User:
    return User.objects.create_user("operator", password="x-Very-Long-Pass-1", is_staff=True)


def only_entry(**filters: object) -> OperatorAuditEntry:
    """The one entry matching `filters`; fails when there are none or several."""
    entries = list(OperatorAuditEntry.objects.filter(**filters))
    assert len(entries) == 1, [(e.action, e.object_repr) for e in entries]
    return entries[0]


def entry_text(entry: OperatorAuditEntry) -> str:
    return f"{entry.before} {entry.after}"


def changed(values: dict | None) -> dict:
    """The changed values without `updated_at`, which every save moves."""
    return {key: value for key, value in (values or {}).items() if key != "updated_at"}


# --- bots and model profiles --------------------------------------------------------------------


def test_bot_save_writes_one_entry_with_actor_object_and_changed_fields(bot, operator):
    # Given a bot whose prompt and allow-list an operator changes
    bot.system_prompt = "Answer in one sentence."
    bot.allowed_departments = ["HR"]
    # When the service saves it
    bot_save(bot=bot, actor=operator, request_id="req-1")
    # Then one entry records who changed what, and only that
    entry = only_entry()
    assert (entry.action, entry.actor, entry.actor_username) == (
        "bots.bot.update",
        operator,
        "operator",
    )
    assert (entry.object_type, entry.object_id, entry.request_id) == (
        "bots.bot",
        str(bot.pk),
        "req-1",
    )
    assert changed(entry.before) == {
        "system_prompt": "You are a concise HR assistant.",
        "allowed_departments": [],
    }
    assert changed(entry.after) == {
        "system_prompt": "Answer in one sentence.",
        "allowed_departments": ["HR"],
    }


def test_bot_credentials_show_as_fingerprints_never_as_values(bot, operator):
    old_token = bot.token
    # When the token is replaced (and the key given again unchanged)
    names = bot_credentials_set(
        bot=bot, actor=operator, token="N3wTokenValue", encoding_aes_key=bot.encoding_aes_key
    )
    # Then only the token changed, and the entry says so without either value
    assert names == ["token"]
    entry = only_entry(action="bots.bot.update")
    assert set(changed(entry.after)) == {"token_fingerprint"}
    assert entry.before["token_fingerprint"] != entry.after["token_fingerprint"]
    assert entry.after["token_fingerprint"].startswith("hmac-sha256:")
    assert "N3wTokenValue" not in entry_text(entry) and old_token not in entry_text(entry)
    # and giving the same credentials again changes nothing and writes nothing
    assert bot_credentials_set(bot=bot, actor=operator, token="N3wTokenValue") == []
    assert OperatorAuditEntry.objects.count() == 1


def test_a_new_bot_is_a_create_entry_and_a_deleted_one_keeps_its_state(model_profile, operator):
    bot = Bot(
        name="IT",
        slug="it",
        token="CreateT0ken",
        encoding_aes_key=generate_encoding_aes_key(),
        model_profile=model_profile,
    )
    bot_save(bot=bot, actor=operator)
    created = only_entry(action="bots.bot.create")
    assert created.before is None and created.after["slug"] == "it"
    assert created.after["token"] == "(set)" and "CreateT0ken" not in entry_text(created)

    bot_delete(bot=bot, actor=operator)
    deleted = only_entry(action="bots.bot.delete")
    assert deleted.before["slug"] == "it" and deleted.after is None
    assert not Bot.objects.filter(slug="it").exists()


def test_a_failed_save_leaves_neither_the_change_nor_an_entry(bot, operator):
    bot.system_prompt = "Never stored."

    def related() -> None:
        raise RuntimeError("the inline failed")

    with pytest.raises(RuntimeError):
        bot_save(bot=bot, actor=operator, related=related)
    bot.refresh_from_db()
    assert bot.system_prompt == "You are a concise HR assistant."
    assert not OperatorAuditEntry.objects.exists()


def test_model_profile_save_writes_one_entry(model_profile, operator):
    model_profile.slots = 2
    model_profile_save(profile=model_profile, actor=operator)
    entry = only_entry(action="bots.model_profile.update")
    assert entry.object_id == str(model_profile.pk)
    assert entry.before["slots"] == 4 and entry.after["slots"] == 2
    assert "name" not in entry.after


# --- knowledge ----------------------------------------------------------------------------------


def _document(kb: KnowledgeBase, name: str) -> Document:
    document = Document(kb=kb, original_filename=name, status=Document.Status.READY)
    document.file.save(name, ContentFile(b"# t\n\ntext"), save=False)
    document.save()
    return document


def test_knowledge_base_save_re_indexes_only_when_the_chunking_changes(operator):
    kb = KnowledgeBase.objects.create(name="财务", slug="finance")
    _document(kb, "a.md")
    # When only the description changes, nothing is re-indexed
    kb.description = "报销与差旅"
    assert knowledge_base_save(kb=kb, actor=operator) == 0
    assert Document.objects.get().status == Document.Status.READY
    # When the chunk size changes, every document is queued again
    kb.chunk_size = 300
    assert knowledge_base_save(kb=kb, actor=operator) == 1
    assert Document.objects.get().status == Document.Status.PENDING
    # Each save is one entry with what it changed
    first, second = OperatorAuditEntry.objects.order_by("id")
    assert first.action == second.action == "knowledge.knowledgebase.update"
    assert set(changed(first.after)) == {"description"}
    assert second.after["chunk_size"] == 300 and "description" not in second.after


def test_document_upload_save_reindex_and_delete_are_each_audited(operator):
    kb = KnowledgeBase.objects.create(name="HR", slug="hr")
    # An upload (as the knowledge API or a command would do it)
    result = document_upload(
        kb=kb,
        content=SimpleUploadedFile("leave.md", "# 请假\n\n年假五天。".encode()),
        filename="leave.md",
        actor=operator,
        enqueue=False,
    )
    document = result.document
    created = only_entry(action="knowledge.document.create")
    assert created.actor == operator and created.object_id == str(document.pk)
    assert created.after["original_filename"] == "leave.md" and created.after["version"] == 1
    # An edit of the fields the operator owns
    document.title = "请假制度"
    document_save(document=document, actor=operator, fields=["title"])
    edited = only_entry(action="knowledge.document.update")
    assert edited.before["title"] == "" and edited.after["title"] == "请假制度"
    # A re-index and a delete
    assert documents_reindex(documents=[document], actor=operator) == 1
    assert only_entry(action="knowledge.document.reindex").object_id == str(document.pk)
    document_delete(document=document, actor=operator)
    assert only_entry(action="knowledge.document.delete").before["title"] == "请假制度"


def test_knowledge_base_ensure_audits_a_creation_and_a_new_audience_only(operator):
    knowledge_base_ensure(slug="it", actor=operator)
    knowledge_base_ensure(slug="it", actor=operator)  # nothing to change
    knowledge_base_ensure(slug="it", actor=operator, departments=["IT"])
    assert only_entry(action="knowledge.knowledgebase.create").after["slug"] == "it"
    update = only_entry(action="knowledge.knowledgebase.update")
    assert update.after["allowed_departments"] == ["IT"]


# --- audit configuration and accounts -----------------------------------------------------------


def test_policy_save_records_its_rules_and_word_lists_record_a_fingerprint(operator):
    word_list = word_list_save(
        word_list=SensitiveWordList(name="机密", words="绝密文件\n内部价格"), actor=operator
    )
    created = only_entry(action="audit.word_list.create")
    assert created.actor == operator and "words" not in created.after
    assert created.after["word_count"] == 2 and len(created.after["words_sha256"]) == 64
    assert "绝密文件" not in entry_text(created)

    policy = AuditPolicy.objects.create(name="默认策略")

    def rules() -> None:
        PolicyWordList.objects.create(policy=policy, word_list=word_list, action="block")

    policy.refusal_message = "不能回答。"
    policy_save(policy=policy, actor=operator, related=rules, regex_import="E\\d{6}\n")
    entry = only_entry(action="audit.policy.update")
    assert entry.after["refusal_message"] == "不能回答。"
    assert entry.after["word_list_rules"] == [{"word_list": word_list.pk, "action": "block"}]
    assert entry.after["regex_rules"] == [{"pattern": "E\\d{6}", "action": "flag"}]
    assert only_entry(action="audit.policy.regex_import").object_id == str(policy.pk)


def test_archive_source_secrets_never_appear(operator):
    source = ArchiveSource(name="总部", corp_id="ww1", secret="Archive-S3cret-Value")
    archive_source_save(source=source, actor=operator)
    entry = only_entry(action="audit.archive_source.create")
    assert entry.after["secret"] == "(set)" and entry.after["keys"] == []
    assert "Archive-S3cret-Value" not in entry_text(entry)


def test_user_save_and_superuser_ensure_never_record_a_password_hash(operator):
    user = User(username="officer", is_staff=True)
    user.set_password("Officer-Pass-123")
    user_save(user=user, actor=operator)
    entry = only_entry(action="auth.user.create")
    assert entry.after["password"] == "(set)" and entry.after["group_names"] == []
    assert "pbkdf2" not in entry_text(entry)

    superuser_ensure(username="officer", password="Another-Pass-456", actor=operator)
    assert only_entry(action="auth.user.password_set").after == {"password": "(changed)"}
    assert superuser_ensure(username="officer", password=None, actor=operator)[1] == "unchanged"
    assert OperatorAuditEntry.objects.count() == 2


# --- commands -----------------------------------------------------------------------------------


def test_command_actor_is_the_named_user_or_the_system(operator):
    assert command_actor(command="demo_setup", username="operator") == operator
    assert command_actor(command="demo_setup") == SystemActor("system:demo_setup")
    with pytest.raises(LookupError):
        command_actor(command="demo_setup", username="nobody")


def test_demo_setup_is_audited_with_the_system_or_the_given_actor(monkeypatch, settings):
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("DEMO_BOT_TOKEN", raising=False)
    monkeypatch.delenv("DEMO_BOT_AES_KEY", raising=False)
    # Given a first run without --actor
    out = io.StringIO()
    call_command("demo_setup", stdout=out)
    # Then the admin user, the model profile and the bot are each created by the system
    entries = {e.action: e for e in OperatorAuditEntry.objects.all()}
    assert set(entries) == {"auth.user.create", "bots.model_profile.create", "bots.bot.create"}
    for entry in entries.values():
        assert entry.actor is None and entry.actor_username == "system:demo_setup"
    token = Bot.objects.get(slug="demo").token
    assert token in out.getvalue()  # printed once, when generated
    assert token not in entry_text(entries["bots.bot.create"])
    # When it runs again as admin with a new token from the environment
    monkeypatch.setenv("DEMO_BOT_TOKEN", "EnvT0kenValue")
    call_command("demo_setup", "--actor", "admin", stdout=io.StringIO())
    # Then one more entry, the admin's, with the token's fingerprint and not its value
    entry = only_entry(action="bots.bot.update")
    assert entry.actor == User.objects.get(username="admin") and entry.actor_username == "admin"
    assert "token_fingerprint" in entry.after and "EnvT0kenValue" not in entry_text(entry)
    assert OperatorAuditEntry.objects.count() == 4
    assert ModelProfile.objects.count() == 1


def test_a_command_with_an_unknown_actor_changes_nothing():
    with pytest.raises(CommandError, match="nobody"):
        call_command("demo_setup", "--actor", "nobody", stdout=io.StringIO())
    assert not OperatorAuditEntry.objects.exists() and not Bot.objects.exists()


def test_secrets_rotate_is_one_entry_with_the_row_counts(bot, operator, settings):
    settings.FIELD_ENCRYPTION_KEYS = [
        Fernet.generate_key().decode(),
        *settings.FIELD_ENCRYPTION_KEYS,
    ]
    call_command("secrets_rotate", "--actor", "operator", stdout=io.StringIO())
    entry = only_entry(action="core.secrets.rotate")
    assert entry.actor == operator
    assert entry.after["rows"]["bots.bot"] == 1 and entry.after["total"] >= 1
    assert bot.token not in entry_text(entry)


def test_policy_import_records_the_command_actor(tmp_path: Path, operator):
    words = tmp_path / "words.txt"
    words.write_text("甲方底价\n", encoding="utf-8")
    call_command("policy_import", "words", "报价", str(words), stdout=io.StringIO())
    assert only_entry(action="audit.word_list.create").actor_username == "system:policy_import"
    call_command(
        "policy_import", "words", "报价", str(words), "--append", "--actor", "operator",
        stdout=io.StringIO(),
    )  # fmt: skip
    assert only_entry(action="audit.word_list.update").actor == operator


def test_kb_ingest_audits_the_knowledge_base_and_each_upload(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "leave.md").write_text("# 请假\n\n年假五天，病假需要证明。", encoding="utf-8")
    call_command("kb_ingest", "hr", str(docs), "--department", "HR", stdout=io.StringIO())
    kb_entry = only_entry(action="knowledge.knowledgebase.create")
    assert kb_entry.actor_username == "system:kb_ingest"
    assert kb_entry.after["allowed_departments"] == ["HR"]
    document_entry = only_entry(action="knowledge.document.create")
    assert document_entry.actor is None and document_entry.actor_username == "system:kb_ingest"
    assert document_entry.after["original_filename"] == "leave.md"


def test_directory_user_by_hand_is_audited(operator):
    call_command("directory_user", "alice", "--department", "财务部", stdout=io.StringIO())
    created = only_entry(action="knowledge.directoryuser.create")
    assert created.actor_username == "system:directory_user"
    assert created.after["departments"] == ["财务部"]
    call_command(
        "directory_user", "alice", "--tag", "经理", "--actor", "operator", stdout=io.StringIO()
    )
    updated = only_entry(action="knowledge.directoryuser.update")
    assert updated.actor == operator
    assert changed(updated.before) == {"tags": []} and changed(updated.after) == {"tags": ["经理"]}


# --- the admin is one more caller ---------------------------------------------------------------


def test_the_admin_writes_exactly_one_entry_per_save_and_delete(admin_client, bot):
    # A knowledge base change that re-indexes: one entry, with the signed-in user
    kb = KnowledgeBase.objects.create(name="财务", slug="finance")
    _document(kb, "a.md")
    data = {
        "name": kb.name, "slug": kb.slug, "description": "", "embedding_profile": "",
        "chunk_size": 300, "chunk_overlap": 60, "allowed_departments": "",
        "allowed_userids": "", "allowed_tags": "", "answer_only_from_sources": "unknown",
    }  # fmt: skip
    response = admin_client.post(
        reverse("admin:knowledge_knowledgebase_change", args=[kb.pk]), data
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = only_entry()
    assert entry.action == "knowledge.knowledgebase.update" and entry.actor_username == "admin"
    assert entry.after["chunk_size"] == 300
    assert Document.objects.get().status == Document.Status.PENDING
    # A bot deleted on its delete page: one delete entry
    response = admin_client.post(reverse("admin:bots_bot_delete", args=[bot.pk]), {"post": "yes"})
    assert response.status_code == 302
    deleted = only_entry(action="bots.bot.delete")
    assert deleted.actor_username == "admin" and deleted.before["slug"] == "hr"
    assert OperatorAuditEntry.objects.count() == 2

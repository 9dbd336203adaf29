"""Knowledge bases and documents as operators change them, each change operator-audited.

The admin and `kb_ingest` call these with their actor (a user, or a `SystemActor` for a
command), so an upload or a new audience is audited whichever door it came through.
Uploading and indexing themselves live in `ingest`; this module decides what a change
means (a new chunking re-indexes every document) and records it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.db import transaction

from apps.audit.services.operator_audit import (
    model_delete_audited,
    model_snapshot,
    operator_audit_record,
    operator_audited,
)
from apps.directory.models import DirectoryUser
from apps.directory.services import directory_user_save
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.services.ingest import UploadResult, document_file_replace, document_reindex
from apps.knowledge.services.maintenance import chunks_deleted_note
from apps.knowledge.services.reembed import knowledge_base_embedder_change

DIRECTORY_USER_ACTION = "knowledge.directoryuser"
KNOWLEDGE_BASE_ACTION = "knowledge.knowledgebase"
DOCUMENT_ACTION = "knowledge.document"
PASSAGE_ACTION = "knowledge.passage"
# Changing these changes every chunk of the knowledge base, so saving them re-indexes.
REINDEX_FIELDS = ("chunk_size", "chunk_overlap")


def knowledge_base_save(
    *,
    kb: KnowledgeBase,
    actor: Any,
    related: Callable[[], None] | None = None,
    request_id: str = "",
) -> int:
    """Save a knowledge base with its entry; how many documents it queued for re-indexing.

    A changed chunking makes the stored chunks stale, so every document is indexed again
    (the old chunks stay searchable until each run finishes). A changed embedder only
    changes the vectors: the chunks are re-embedded in the background and swapped in at
    once, the current vectors answering until then.
    """
    with operator_audited(
        actor=actor, action_prefix=KNOWLEDGE_BASE_ACTION, obj=kb, request_id=request_id
    ) as before:
        embedder = _embedder_change(before, kb)
        if embedder is not None:
            # Saved as it was; the change goes through the re-embed, which pins the vectors
            # serving now before the knowledge base says it uses the new embedder.
            kb.embedder, kb.embedding_profile_id = (
                before["embedder"],
                before["embedding_profile_id"],
            )
        kb.save()
        if related is not None:
            related()
        if embedder is not None:
            knowledge_base_embedder_change(kb=kb, embedder=embedder[0], profile=embedder[1])
        if before is None or all(before.get(f) == getattr(kb, f) for f in REINDEX_FIELDS):
            return 0
        return document_reindex(documents=kb.documents.all())


def _embedder_change(before: dict[str, Any] | None, kb: KnowledgeBase) -> tuple[str, Any] | None:
    """The (embedder, GGUF profile) `kb` now asks for, when that changes its vectors."""
    if before is None:
        return None
    gguf = kb.embedder == KnowledgeBase.Embedders.GGUF
    if before["embedder"] == kb.embedder and (
        not gguf or before["embedding_profile_id"] == kb.embedding_profile_id
    ):
        return None
    return kb.embedder, kb.embedding_profile


def knowledge_base_delete(*, kb: KnowledgeBase, actor: Any, request_id: str = "") -> None:
    with transaction.atomic():
        passages = Chunk.objects.filter(document__kb=kb).count()
        model_delete_audited(
            obj=kb, actor=actor, action_prefix=KNOWLEDGE_BASE_ACTION, request_id=request_id
        )
        chunks_deleted_note(count=passages)


def knowledge_base_ensure(
    *, slug: str, actor: Any, departments: list[str] | None = None, request_id: str = ""
) -> tuple[KnowledgeBase, bool]:
    """The knowledge base with this slug, created if missing (named after the slug).

    Given departments become its audience, on an existing knowledge base too; None leaves
    the audience as it is. Only a creation or a new audience writes an entry.
    """
    with transaction.atomic():
        kb = KnowledgeBase.objects.select_for_update().filter(slug=slug).first()
        created = kb is None
        if kb is None:
            kb = KnowledgeBase(slug=slug, name=slug)
        elif departments is None or kb.allowed_departments == departments:
            return kb, False
        if departments is not None:
            kb.allowed_departments = departments
        knowledge_base_save(kb=kb, actor=actor, request_id=request_id)
    return kb, created


def document_save(
    *,
    document: Document,
    actor: Any,
    upload: File | None = None,
    filename: str = "",
    fields: Iterable[str] | None = None,
    related: Callable[[], None] | None = None,
    enqueue: bool = True,
    request_id: str = "",
) -> UploadResult | None:
    """Save a document with its entry: with `upload`, as its next version (see
    `document_file_replace`); else only `fields` (None: all), since the rest of the row
    belongs to ingestion."""
    result = None
    with operator_audited(
        actor=actor, action_prefix=DOCUMENT_ACTION, obj=document, request_id=request_id
    ):
        if upload is not None:
            result = document_file_replace(
                document=document,
                content=upload,
                filename=filename or upload.name or "",
                enqueue=enqueue,
            )
        elif fields is not None and document.pk is not None:
            document.save(update_fields=[*fields, "updated_at"])
        else:
            document.save()
        if related is not None:
            related()
    return result


def document_upload(
    *,
    kb: KnowledgeBase,
    content: File,
    filename: str,
    actor: Any,
    owner: AbstractBaseUser | None = None,
    title: str = "",
    enqueue: bool = True,
    request_id: str = "",
) -> UploadResult:
    """Store a file as a new document, or as the next version of the same-named one."""
    filename = Path(filename).name
    with transaction.atomic():
        document = Document.objects.filter(kb=kb, original_filename=filename).first()
        if document is None:
            document = Document(kb=kb, title=title, owner=owner)
        elif title:
            document.title = title
        result = document_save(
            document=document,
            actor=actor,
            upload=content,
            filename=filename,
            enqueue=enqueue,
            request_id=request_id,
        )
    assert result is not None
    return result


def document_delete(*, document: Document, actor: Any, request_id: str = "") -> None:
    with transaction.atomic():
        passages = Chunk.objects.filter(document=document).count()
        model_delete_audited(
            obj=document, actor=actor, action_prefix=DOCUMENT_ACTION, request_id=request_id
        )
        chunks_deleted_note(count=passages)


def documents_reindex(*, documents: Iterable[Document], actor: Any, request_id: str = "") -> int:
    """Queue fresh ingestion runs, one entry per document (the chunks are its content)."""
    documents = list(documents)
    with transaction.atomic():
        for document in documents:
            operator_audit_record(
                actor=actor,
                action=f"{DOCUMENT_ACTION}.reindex",
                obj=document,
                after={"status": Document.Status.PENDING},
                request_id=request_id,
            )
        return document_reindex(documents=documents)


def passage_enable_set(*, chunk: Chunk, enabled: bool, actor: Any, request_id: str = "") -> bool:
    """Let searches find a passage again, or hide it from them; True if it changed.

    Hiding a passage changes what every bot may answer, so it is an operator change. A
    re-index makes new passages, all enabled: the setting belongs to this ingestion run.
    """
    with transaction.atomic():
        if not chunk.enabled_set(enabled):
            return False
        operator_audit_record(
            actor=actor,
            action=f"{PASSAGE_ACTION}.{'enable' if enabled else 'disable'}",
            obj=chunk,
            before={"enabled": not enabled},
            after={"enabled": enabled},
            request_id=request_id,
        )
    return True


def directory_user_set(
    *,
    userid: str,
    actor: Any,
    name: str | None = None,
    departments: list[str] | None = None,
    tags: list[str] | None = None,
    request_id: str = "",
) -> tuple[DirectoryUser, bool]:
    """Create or change one employee by hand (see `directory_user_save`), with its entry.

    Departments and tags decide which documents the employee's answers may use, so a change
    by hand is an operator change; the sync from WeCom is not (it mirrors the source).
    """
    with transaction.atomic():
        stored = DirectoryUser.objects.select_for_update().filter(userid=userid).first()
        before = model_snapshot(stored)
        user, created = directory_user_save(
            userid=userid, name=name, departments=departments, tags=tags
        )
        operator_audit_record(
            actor=actor,
            action=f"{DIRECTORY_USER_ACTION}.{'create' if created else 'update'}",
            obj=user,
            before=before,
            after=model_snapshot(user),
            request_id=request_id,
        )
    return user, created

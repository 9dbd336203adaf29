"""Uploading documents and indexing them: parse → chunk → embed in batches → write chunks.

Every ingestion run takes the document's next *generation* and writes its chunks under
it, invisible to searches, which read only the document's `active_generation`. When the
run is done, one transaction points the document at the new generation and deletes every
other generation's chunks, so searches see the old chunks or the new ones, never neither
and never both. A run that a newer one overtook (a newer upload, a second re-index)
removes its own chunks and leaves the document alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from asgiref.sync import async_to_sync
from celery.exceptions import SoftTimeLimitExceeded
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from apps.core.language import deployment_language
from apps.knowledge.chunking import chunk_sections
from apps.knowledge.consumers import document_group
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.parsing import DocumentParseError, parse_document
from apps.knowledge.segment import segment_for_search
from apps.knowledge.services.embedding import (
    EmbeddingError,
    embedder_spec_for,
    embedding_index_ensure,
    get_embedder,
)
from apps.knowledge.services.maintenance import chunks_deleted_note

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[Document, str], None]

# Progress (percent) when each stage starts; embedding fills the span up to _EMBEDDED.
_PARSING, _CHUNKING, _EMBEDDING, _EMBEDDED = 2, 8, 10, 95
# Fields that uploads and ingestion runs own; an admin form's copy of them may be stale.
INGESTION_FIELDS = (
    "status", "progress", "error_code", "error_message", "generation", "active_generation",
    "active_version", "chunk_count", "pages", "sha256", "size_bytes", "file",
    "stage", "stage_done", "stage_total",
)  # fmt: skip
# Tokens kept free under the embedding model's context for the tokens llama.cpp adds.
_CONTEXT_MARGIN = 8


# --- uploading (the audited doors are in `config`: knowledge_base_ensure, document_upload) ---


@dataclass(frozen=True)
class UploadResult:
    document: Document
    # "created", "new_version", "retry" (same bytes after a failure) or "unchanged".
    outcome: str

    @property
    def needs_ingest(self) -> bool:
        return self.outcome != "unchanged"


def document_file_replace(
    *, document: Document, content: File, filename: str, enqueue: bool = True
) -> UploadResult:
    """Give the document (saved or not) this file: its first version, or its next one.

    Identical bytes change nothing but the document's other fields (a failed document is
    retried instead). With `enqueue`, ingestion starts on the `ingest` queue once the
    transaction commits; until the new version is indexed, the old one stays searchable.
    """
    filename = Path(filename).name
    sha256, size = _digest(content)
    with transaction.atomic():
        current = None
        if document.pk is not None:
            current = Document.objects.select_for_update().filter(pk=document.pk).first()
        if current is None:
            document.version = 1
            outcome = "created"
        else:
            # Ingestion owns these; the caller's copy of the row may predate a worker's write.
            for field in INGESTION_FIELDS:
                setattr(document, field, getattr(current, field))
            document.version = current.version
            if current.sha256 == sha256:
                outcome = "retry" if current.status == Document.Status.FAILED else "unchanged"
            else:
                outcome = "new_version"
                document.version += 1
                old_file = current.file.name
                transaction.on_commit(lambda: _file_delete(old_file))
        if outcome == "unchanged":
            document.save()
            return UploadResult(document, outcome)
        if outcome != "retry":
            content.seek(0)
            document.original_filename = filename
            document.file.save(filename, content, save=False)
            document.sha256, document.size_bytes = sha256, size
        document.status = Document.Status.PENDING
        document.progress = 0
        document.stage, document.stage_done, document.stage_total = Document.Stage.NONE, 0, 0
        document.error_code = document.error_message = ""
        document.save()
        if enqueue:
            document_id = document.pk
            transaction.on_commit(lambda: document_enqueue(document_id=document_id))
    return UploadResult(document, outcome)


def document_reindex(*, documents: Iterable[Document]) -> int:
    """Queue fresh ingestion runs; the current chunks stay searchable until each finishes."""
    ids = [document.pk for document in documents]
    with transaction.atomic():
        Document.objects.filter(pk__in=ids).update(
            status=Document.Status.PENDING,
            progress=0,
            stage=Document.Stage.NONE,
            stage_done=0,
            stage_total=0,
            error_code="",
            error_message="",
        )
        for document_id in ids:
            transaction.on_commit(
                lambda document_id=document_id: document_enqueue(document_id=document_id)
            )
    return len(ids)


def document_enqueue(*, document_id: int) -> None:
    from apps.knowledge.tasks import document_ingest as document_ingest_task

    document_ingest_task.delay(document_id)


def _digest(content: File) -> tuple[str, int]:
    content.seek(0)
    digest, size = hashlib.sha256(), 0
    for block in content.chunks():
        digest.update(block)
        size += len(block)
    content.seek(0)
    return digest.hexdigest(), size


def _file_delete(name: str) -> None:
    try:
        default_storage.delete(name)
    except OSError:
        logger.warning("could not delete the replaced upload %s", name, exc_info=True)


# --- ingesting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    document_id: int
    generation: int
    version: int
    file_name: str
    original_filename: str
    kb: KnowledgeBase


class _Superseded(Exception):
    """A newer run started for the same document; this one stops and cleans up."""


def document_ingest(
    *, document_id: int, on_progress: ProgressCallback | None = None
) -> Document | None:
    """Index the document's current file; failures end in status `failed`, never raise.

    `on_progress` is called (throttled) with the document and the stage; the same updates
    are saved on the document and published to the `kb.document.<id>` Channels group.
    Returns the document as the run left it, or None if it was deleted meanwhile.
    """
    run = _run_start(document_id)
    if run is None:
        return None
    reporter = _ProgressReporter(run, on_progress)
    try:
        reporter.report(Document.Stage.PARSING, _PARSING, force=True)
        _run_build(run, reporter)
    except _Superseded:
        _run_abandon(run)
    except DocumentParseError as exc:
        _run_fail(run, reporter, code=exc.code, message=exc.message)
    except EmbeddingError as exc:
        _run_fail(run, reporter, code="embedding", message=str(exc))
    except SoftTimeLimitExceeded:
        _run_fail(
            run,
            reporter,
            code="too_large",
            message=(
                "Indexing took longer than the "
                f"{settings.KNOWLEDGE_INGEST_TIME_LIMIT_SECONDS} s allowed and was stopped. "
                "Split the document into smaller ones."
            ),
        )
    except MemoryError:
        logger.warning("document %s: over the ingest memory limit", document_id, exc_info=True)
        _run_fail(
            run,
            reporter,
            code="too_large",
            message="Indexing needed more memory than allowed. Split the document into "
            "smaller ones.",
        )
    except OSError as exc:
        logger.warning("document %s: file unreadable", document_id, exc_info=True)
        _run_fail(
            run,
            reporter,
            code="unreadable",
            message=f"The uploaded file could not be read ({exc.strerror or exc}).",
        )
    except Exception:  # a bug must fail this document, not the worker
        logger.exception("document %s: ingestion failed", document_id)
        _run_fail(
            run,
            reporter,
            code="internal",
            message="An unexpected error stopped indexing; the worker log has the details.",
        )
    return Document.objects.filter(pk=document_id).first()


def _run_start(document_id: int) -> _Run | None:
    with transaction.atomic():
        document = (
            Document.objects.select_for_update(of=("self",))
            .select_related("kb__embedding_profile")
            .filter(pk=document_id)
            .first()
        )
        if document is None:
            logger.info("document %s vanished before ingestion", document_id)
            return None
        document.generation += 1
        document.status = Document.Status.PROCESSING
        document.progress = 0
        document.error_code = document.error_message = ""
        document.save(
            update_fields=[
                "generation", "status", "progress", "error_code", "error_message", "updated_at",
            ]
        )  # fmt: skip
    return _Run(
        document_id=document.pk,
        generation=document.generation,
        version=document.version,
        file_name=document.file.name,
        original_filename=document.original_filename,
        kb=document.kb,
    )


def _run_build(run: _Run, reporter: _ProgressReporter) -> None:
    with _local_path(run.file_name) as path:
        parsed = parse_document(
            path, filename=run.original_filename, max_bytes=settings.KNOWLEDGE_MAX_UPLOAD_BYTES
        )
    reporter.report(Document.Stage.CHUNKING, _CHUNKING, force=True)
    embedder = get_embedder(embedder_spec_for(run.kb))
    chunk_size = min(run.kb.chunk_size, embedder.max_tokens - _CONTEXT_MARGIN)
    chunks = chunk_sections(
        parsed.sections,
        chunk_size=chunk_size,
        overlap=min(run.kb.chunk_overlap, chunk_size - 1),
        count_tokens=embedder.count_tokens,
    )
    if not chunks:
        raise DocumentParseError("empty", "The document contains no extractable text.")
    if len(chunks) > settings.KNOWLEDGE_MAX_CHUNKS:
        raise DocumentParseError(
            "too_large",
            f"The document makes {len(chunks):,} passages, more than the "
            f"{settings.KNOWLEDGE_MAX_CHUNKS:,} allowed. Split it into smaller documents.",
        )
    embedding_index_ensure(dimensions=embedder.dimensions)
    model_key = embedder.model_key
    batch_size = settings.KNOWLEDGE_EMBEDDING_BATCH
    reporter.report(Document.Stage.EMBEDDING, _EMBEDDING, total=len(chunks), force=True)
    # The title the document will show (an admin's own wins, as in `_run_finish`).
    title = (
        Document.objects.filter(pk=run.document_id).values_list("title", flat=True).first()
        or parsed.title
        or ""
    )
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        vectors = embedder.embed(
            [embedded_text(c.heading_path, c.text, title=title) for c in batch]
        )
        _check_latest(run)
        Chunk.objects.bulk_create(
            Chunk(
                document_id=run.document_id,
                document_version=run.version,
                generation=run.generation,
                position=chunk.position,
                heading_path=list(chunk.heading_path),
                text=chunk.text,
                search_text=segment_for_search(passage_text(chunk.heading_path, chunk.text)),
                token_count=chunk.token_count,
                page=chunk.page,
                embedding=vector,
                embedding_dimensions=embedder.dimensions,
                embedding_model=model_key,
            )
            for chunk, vector in zip(batch, vectors, strict=True)
        )
        done = start + len(batch)
        reporter.report(
            Document.Stage.EMBEDDING,
            _EMBEDDING + (_EMBEDDED - _EMBEDDING) * done // len(chunks),
            done=done,
            total=len(chunks),
        )
    _run_finish(run, reporter, chunk_count=len(chunks), pages=parsed.pages, title=parsed.title)
    # Record the width the knowledge base serves, unless a re-index pins older vectors.
    KnowledgeBase.objects.filter(pk=run.kb.pk, embedding_model="").exclude(
        embedding_dimensions=embedder.dimensions
    ).update(embedding_dimensions=embedder.dimensions)


def embedded_text(heading_path: Iterable[str], text: str, *, title: str = "") -> str:
    """What is embedded for a chunk: with the document's title and its headings unless
    `KNOWLEDGE_EMBED_HEADINGS` is off (the bench measures both).

    A passage often never names its subject ("must be filed within 15 days"); the title
    says what it is about. Markdown's top heading usually is the title already; PDFs,
    DOCX and plain text often have a title but no heading path.
    """
    if not settings.KNOWLEDGE_EMBED_HEADINGS:
        return text
    path = list(heading_path)
    if title and (not path or path[0] != title):
        path.insert(0, title)
    return passage_text(path, text)


def passage_text(heading_path: Iterable[str], text: str) -> str:
    """What is embedded and indexed for a chunk: its headings give a bare passage context."""
    headings = " > ".join(heading_path)
    return f"{headings}\n{text}" if headings else text


def _check_latest(run: _Run) -> None:
    latest = Document.objects.filter(pk=run.document_id).values_list("generation", flat=True)
    if latest.first() != run.generation:
        raise _Superseded


def _run_finish(
    run: _Run, reporter: _ProgressReporter, *, chunk_count: int, pages: int, title: str
) -> None:
    """The flip: in one transaction the new chunks become the searchable ones, the rest go."""
    with transaction.atomic():
        document = Document.objects.select_for_update().filter(pk=run.document_id).first()
        if document is None or document.generation != run.generation:
            raise _Superseded
        document.active_generation = run.generation
        document.active_version = run.version
        document.status = Document.Status.READY
        document.progress = 100
        document.stage, document.stage_done, document.stage_total = Document.Stage.NONE, 0, 0
        document.chunk_count = chunk_count
        document.pages = pages
        document.title = document.title or title
        document.save()
        deleted, _ = (
            Chunk.objects.filter(document_id=run.document_id)
            .exclude(generation=run.generation)
            .delete()
        )
        chunks_deleted_note(count=deleted)
    reporter.publish(document, "done")


def _run_abandon(run: _Run) -> None:
    logger.info("document %s: run %s superseded by a newer one", run.document_id, run.generation)
    with transaction.atomic():
        deleted, _ = Chunk.objects.filter(
            document_id=run.document_id, generation=run.generation
        ).delete()
        chunks_deleted_note(count=deleted)


def _run_fail(run: _Run, reporter: _ProgressReporter, *, code: str, message: str) -> None:
    """Drop this run's chunks; the previous version (if any) stays searchable."""
    with transaction.atomic():
        deleted, _ = Chunk.objects.filter(
            document_id=run.document_id, generation=run.generation
        ).delete()
        chunks_deleted_note(count=deleted)
        updated = Document.objects.filter(pk=run.document_id, generation=run.generation).update(
            status=Document.Status.FAILED,
            progress=0,
            stage=Document.Stage.NONE,
            stage_done=0,
            stage_total=0,
            error_code=code,
            error_message=message,
        )
    logger.info("document %s failed: %s (%s)", run.document_id, message, code)
    if updated:
        document = Document.objects.filter(pk=run.document_id).first()
        if document is not None:
            reporter.publish(document, "failed")


@contextlib.contextmanager
def _local_path(name: str) -> Iterator[Path]:
    """A filesystem path for a stored upload; remote storages are copied to a temp file."""
    try:
        local = default_storage.path(name)
    except NotImplementedError:
        local = None
    if local is not None:
        yield Path(local)
        return
    suffix = Path(name).suffix
    with (
        default_storage.open(name, "rb") as source,
        tempfile.NamedTemporaryFile(suffix=suffix) as copy,
    ):
        shutil.copyfileobj(source, copy)
        copy.flush()
        yield Path(copy.name)


class _ProgressReporter:
    """Saves and publishes progress at most every KNOWLEDGE_PROGRESS_INTERVAL_SECONDS."""

    def __init__(self, run: _Run, callback: ProgressCallback | None) -> None:
        self.run = run
        self.callback = callback
        self.interval = settings.KNOWLEDGE_PROGRESS_INTERVAL_SECONDS
        self._last = 0.0

    def report(
        self, stage: str, progress: int, *, done: int = 0, total: int = 0, force: bool = False
    ) -> None:
        """Record where the run is (stage, n of m) on the document, for the admin to poll."""
        stage = str(stage)  # the plain value: the event travels through msgpack
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        Document.objects.filter(pk=self.run.document_id, generation=self.run.generation).update(
            progress=progress, stage=stage, stage_done=done, stage_total=total
        )
        document = Document(
            pk=self.run.document_id,
            status=Document.Status.PROCESSING,
            progress=progress,
            version=self.run.version,
        )
        self.publish(document, stage)

    def publish(self, document: Document, stage: str) -> None:
        if self.callback is not None:
            self.callback(document, stage)
        document_progress_publish(document, stage=stage)


def document_progress_publish(document: Document, *, stage: str) -> None:
    """Tell admins watching the document; a lost update is harmless, so never raise."""
    layer = get_channel_layer()
    if layer is None:
        return
    with deployment_language():
        label = str(Document.Status(document.status).label)
    try:
        async_to_sync(layer.group_send)(
            document_group(document.pk),
            {
                "type": "document.progress",
                "status": document.status,
                "label": label,
                "progress": document.progress,
                "stage": stage,
                "version": document.version,
                "error": document.error_message,
            },
        )
    except Exception:  # a Redis hiccup must not fail the ingestion itself
        logger.warning("could not publish document %s progress", document.pk, exc_info=True)

"""Changing a knowledge base's embedder: re-embed every passage, then swap in one step.

Vectors of two models are not comparable, so a question can only be embedded by the model
that made the vectors it is compared with. While the new vectors are made (Celery, ingest
queue), `KnowledgeBase.embedding_model` pins the old model and dense search keeps reading
the old vectors; the swap points every document at its re-embedded copy and unpins the
knowledge base in one transaction, so searches see all-old or all-new, never a mix.

Copies are chunks under the document's next generation (the same text and search words,
new vectors), made only for ready documents; a document that is uploaded or re-indexed in
the meantime is indexed by the new embedder anyway, and its newer run wins over the copy.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models import F

from apps.inference.embedders import Embedder
from apps.inference.models import ModelProfile
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.services.embedding import (
    embedder_spec_for,
    embedding_index_ensure,
    get_embedder,
)
from apps.knowledge.services.ingest import document_reindex, embedded_text
from apps.knowledge.services.maintenance import chunks_deleted_note

logger = logging.getLogger(__name__)


def knowledge_base_embedder_change(
    *, kb: KnowledgeBase, embedder: str, profile: ModelProfile | None = None
) -> bool:
    """Configure `kb`'s embedder; True when that changes its vectors and a re-embed is queued.

    The vectors serving now are pinned first, so questions keep being answered from them
    until the background run swaps in the new ones. `profile` is the GGUF model (None = the
    default one) and is only changed for the GGUF embedder; switching to the bundled
    encoder keeps it, so the pinned GGUF model keeps its settings (offload) meanwhile.
    """
    with transaction.atomic():
        locked = KnowledgeBase.objects.select_for_update().get(pk=kb.pk)
        serving = locked.embedding_model or embedder_spec_for(locked).model_key
        locked.embedder = embedder
        if embedder == KnowledgeBase.Embedders.GGUF:
            locked.embedding_profile = profile
        target = embedder_spec_for(locked).model_key
        locked.embedding_model = "" if target == serving else serving
        locked.save(update_fields=["embedder", "embedding_profile", "embedding_model"])
        if locked.embedding_model:
            transaction.on_commit(lambda: knowledge_base_reembed_enqueue(kb_id=locked.pk))
    kb.refresh_from_db()
    return bool(kb.embedding_model)


def knowledge_base_reembed_enqueue(*, kb_id: int) -> None:
    from apps.knowledge.tasks import knowledge_base_reembed as knowledge_base_reembed_task

    knowledge_base_reembed_task.delay(kb_id)


def knowledge_base_reembed(*, kb_id: int) -> bool:
    """Make the configured embedder's vectors for every ready document, then swap.

    Returns False when there was nothing pinned (no change pending) or another change
    overtook this run (its own run swaps).
    """
    kb = KnowledgeBase.objects.select_related("embedding_profile").filter(pk=kb_id).first()
    if kb is None or not kb.embedding_model:
        return False
    embedder = get_embedder(embedder_spec_for(kb))
    target = embedder.model_key
    embedding_index_ensure(dimensions=embedder.dimensions)
    copies: dict[int, tuple[int, int]] = {}
    for document_id in kb.documents.filter(status=Document.Status.READY).values_list(
        "pk", flat=True
    ):
        generations = _copy_reserve(document_id)
        if generations is None:
            continue
        copies[document_id] = generations
        _copy_write(document_id, *generations, embedder=embedder)
    return _swap(kb_id, target=target, dimensions=embedder.dimensions, copies=copies)


def _copy_reserve(document_id: int) -> tuple[int, int] | None:
    """Take the document's next generation for the copy; None if it is not ready now."""
    with transaction.atomic():
        document = Document.objects.select_for_update().filter(pk=document_id).first()
        if (
            document is None
            or document.status != Document.Status.READY
            or document.active_generation is None
        ):
            return None
        document.generation += 1
        document.save(update_fields=["generation"])
        return document.active_generation, document.generation


def _copy_write(document_id: int, source: int, generation: int, *, embedder: Embedder) -> None:
    chunks = list(
        Chunk.objects.filter(document_id=document_id, generation=source).order_by("position")
    )
    title = Document.objects.filter(pk=document_id).values_list("title", flat=True).first()
    batch_size = settings.KNOWLEDGE_EMBEDDING_BATCH
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start : start + batch_size]
        vectors = embedder.embed(
            [embedded_text(c.heading_path, c.text, title=title or "") for c in batch]
        )
        for chunk, vector in zip(batch, vectors, strict=True):
            chunk.pk = None
            chunk.generation = generation
            chunk.embedding = vector
            chunk.embedding_dimensions = embedder.dimensions
            chunk.embedding_model = embedder.model_key
        Chunk.objects.bulk_create(batch)


def _swap(kb_id: int, *, target: str, dimensions: int, copies: dict[int, tuple[int, int]]) -> bool:
    with transaction.atomic():
        kb = (
            KnowledgeBase.objects.select_for_update(of=("self",))
            .select_related("embedding_profile")
            .get(pk=kb_id)
        )
        deleted = 0
        if embedder_spec_for(kb).model_key != target:
            for document_id, (_source, generation) in copies.items():
                deleted += _chunks_delete(document_id, generation)
            chunks_deleted_note(count=deleted)
            logger.info("knowledge base %s: re-embed overtaken by another change", kb_id)
            return False
        for document_id, (source, generation) in copies.items():
            document = Document.objects.select_for_update().filter(pk=document_id).first()
            if document is not None and document.active_generation == source:
                document.active_generation = generation
                document.save(update_fields=["active_generation", "updated_at"])
                deleted += _chunks_delete(document_id, source)
            else:
                deleted += _chunks_delete(document_id, generation)
        chunks_deleted_note(count=deleted)
        kb.embedding_model = ""
        kb.embedding_dimensions = dimensions
        kb.save(update_fields=["embedding_model", "embedding_dimensions", "updated_at"])
        # Runs that were already embedding with the old model when the change came.
        stale_ids = (
            Chunk.objects.filter(document__kb_id=kb_id, generation=F("document__active_generation"))
            .exclude(embedding_model=target)
            .values_list("document_id", flat=True)
            .distinct()
        )
        stale = list(Document.objects.filter(pk__in=list(stale_ids)))
    if stale:
        document_reindex(documents=stale)
    return True


def _chunks_delete(document_id: int, generation: int) -> int:
    deleted, _ = Chunk.objects.filter(document_id=document_id, generation=generation).delete()
    return deleted

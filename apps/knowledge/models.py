"""Knowledge bases, their documents and chunks, and the audiences deciding who sees what.

Audiences (allowed departments, users and tags) are plain string arrays matched against
the directory's `DirectoryUser` inside the retrieval SQL; empty everywhere means everyone.
A document is searchable through the chunks of its *active generation* only, so a new version or a
re-index replaces the old chunks in one flip, never leaving a moment with none or both.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.functional import Promise
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _
from pgvector.django import VectorField

from apps.inference.models import ModelProfile


def _audience_fields(help_suffix: Promise) -> tuple[ArrayField, ArrayField, ArrayField]:
    departments = ArrayField(
        models.CharField(max_length=100),
        verbose_name=_("allowed departments"),
        default=list,
        blank=True,
        help_text=format_lazy("{} {}", _("Department names or ids, comma-separated."), help_suffix),
    )
    userids = ArrayField(
        models.CharField(max_length=64),
        verbose_name=_("allowed users"),
        default=list,
        blank=True,
        help_text=_("WeCom userids, comma-separated."),
    )
    tags = ArrayField(
        models.CharField(max_length=100),
        verbose_name=_("allowed tags"),
        default=list,
        blank=True,
        help_text=_("Directory tags, comma-separated."),
    )
    return departments, userids, tags


def document_upload_to(instance: Document, filename: str) -> str:
    """Keep the uploaded name (citations show it) in a folder of its own per upload."""
    return f"knowledge/{instance.kb.slug}/{uuid.uuid4().hex}/{filename}"


class KnowledgeBase(models.Model):
    """A collection of documents that bots answer from, visible to an audience of employees."""

    class Embedders(models.TextChoices):
        BUNDLED = "use-multilingual-v3", _("bundled multilingual sentence encoder")
        GGUF = "gguf", _("llama.cpp GGUF model (embedding model below)")

    name = models.CharField(_("name"), max_length=100)
    slug = models.SlugField(_("slug"), max_length=50, unique=True)
    description = models.TextField(_("description"), blank=True)
    embedder = models.CharField(
        _("embedder"),
        max_length=40,
        choices=Embedders.choices,
        default=Embedders.BUNDLED,
        help_text=_(
            "What turns passages and questions into vectors. The bundled encoder works on "
            "any machine and across Chinese and English; changing it re-indexes every "
            "document in the background while the old vectors keep serving."
        ),
    )
    # Set while a changed embedder re-indexes: the model key of the vectors that keep
    # serving until the swap; empty = the configured embedder's vectors serve.
    embedding_model = models.CharField(max_length=600, blank=True, default="", editable=False)
    embedding_dimensions = models.PositiveSmallIntegerField(
        _("vector dimensions"), null=True, blank=True, editable=False
    )
    embedding_profile = models.ForeignKey(
        ModelProfile,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="knowledge_bases",
        verbose_name=_("embedding model"),
        help_text=_(
            "The model that turns passages and questions into vectors; empty = the default "
            "model. Changing it requires re-indexing every document."
        ),
    )
    chunk_size = models.PositiveIntegerField(
        _("chunk size"),
        default=400,
        validators=[MinValueValidator(32), MaxValueValidator(2048)],
        help_text=_("Tokens per passage (as the embedding model counts them)."),
    )
    chunk_overlap = models.PositiveIntegerField(
        _("chunk overlap"),
        default=60,
        validators=[MaxValueValidator(1024)],
        help_text=_("Tokens of whole sentences repeated between consecutive passages."),
    )
    allowed_departments, allowed_userids, allowed_tags = _audience_fields(
        _("Empty departments, users and tags = everyone.")
    )
    open_to_external = models.BooleanField(
        _("open to external users"),
        default=False,
        help_text=_(
            "Bots may answer people outside the company (WeChat customers, Official Account "
            "followers, mini-program users, API keys) from the documents of this knowledge "
            "base that have no audience of their own. Off = employees only."
        ),
    )
    answer_only_from_sources = models.BooleanField(
        _("answer only from sources"),
        null=True,
        blank=True,
        help_text=_(
            "Yes = bots must answer from this knowledge base's passages or say they do not "
            "know; empty = the bot's own setting decides."
        ),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("knowledge base")
        verbose_name_plural = _("knowledge bases")
        ordering = ["name"]
        permissions = [
            (
                "search_all_audiences",
                _("Can search all knowledge and search as any employee"),
            )
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(chunk_overlap__lt=models.F("chunk_size")),
                name="knowledgebase_overlap_below_size",
            )
        ]

    def __str__(self) -> str:
        return self.name


class Document(models.Model):
    """One file in a knowledge base; uploading it again makes a new version of the same row."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        PROCESSING = "processing", _("processing")
        READY = "ready", _("ready")
        FAILED = "failed", _("failed")

    class Stage(models.TextChoices):
        """Where a running ingestion is; empty while none runs."""

        NONE = "", _("not running")
        PARSING = "parsing", _("parsing")
        CHUNKING = "chunking", _("chunking")
        EMBEDDING = "embedding", _("embedding")

    kb = models.ForeignKey(
        KnowledgeBase,
        on_delete=models.CASCADE,
        related_name="documents",
        verbose_name=_("knowledge base"),
    )
    file = models.FileField(_("file"), upload_to=document_upload_to, max_length=500)
    original_filename = models.CharField(_("file name"), max_length=255)
    title = models.CharField(_("title"), max_length=300, blank=True)
    version = models.PositiveIntegerField(
        _("version"), default=1, help_text=_("Raised by every upload of a new file.")
    )
    active_version = models.PositiveIntegerField(
        _("searchable version"),
        null=True,
        blank=True,
        help_text=_("The version whose passages answers use; empty = none yet."),
    )
    # Every ingestion run takes the next generation; searches read the active one only.
    generation = models.PositiveIntegerField(_("ingestion runs"), default=0)
    active_generation = models.PositiveIntegerField(null=True, blank=True, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("owner"),
        help_text=_("Who keeps this document correct."),
    )
    expires_on = models.DateField(
        _("review by"),
        null=True,
        blank=True,
        help_text=_("After this date the document is no longer used for answers; empty = never."),
    )
    status = models.CharField(
        _("status"), max_length=12, choices=Status.choices, default=Status.PENDING
    )
    progress = models.PositiveSmallIntegerField(
        _("progress"), default=0, validators=[MaxValueValidator(100)]
    )
    # What the running ingestion does, and how many of the stage's items it has done.
    stage = models.CharField(
        _("stage"), max_length=12, choices=Stage.choices, default=Stage.NONE, blank=True
    )
    stage_done = models.PositiveIntegerField(_("done in stage"), default=0)
    stage_total = models.PositiveIntegerField(_("total in stage"), default=0)
    error_code = models.CharField(_("error code"), max_length=30, blank=True)
    error_message = models.TextField(_("error"), blank=True)
    sha256 = models.CharField(_("SHA-256"), max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(_("size (bytes)"), default=0)
    pages = models.PositiveIntegerField(_("pages"), null=True, blank=True)
    chunk_count = models.PositiveIntegerField(_("passages"), default=0)
    allowed_departments, allowed_userids, allowed_tags = _audience_fields(
        _("Empty departments, users and tags = the knowledge base's audience.")
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("document")
        verbose_name_plural = _("documents")
        ordering = ["kb", "title"]
        constraints = [
            models.UniqueConstraint(
                fields=["kb", "original_filename"], name="document_unique_filename_per_kb"
            )
        ]
        indexes = [models.Index(fields=["status", "updated_at"], name="document_status_time")]

    def __str__(self) -> str:
        return self.title or self.original_filename

    @property
    def has_own_audience(self) -> bool:
        return bool(self.allowed_departments or self.allowed_userids or self.allowed_tags)

    @property
    def stage_text(self) -> str:
        """The stage as admins read it: "embedding 3 of 10" while passages are embedded."""
        if self.stage == self.Stage.EMBEDDING and self.stage_total:
            return _("embedding %(done)d of %(total)d") % {
                "done": self.stage_done,
                "total": self.stage_total,
            }
        return str(self.get_stage_display()) if self.stage else ""


class Chunk(models.Model):
    """A passage of one ingestion run of a document, with its vector and its search words.

    `embedding` has no fixed dimension so that knowledge bases may use embedding models of
    any size. Each dimension has a partial HNSW index over `embedding::vector(N)` (cosine):
    migration 0002 creates the one for the default model's 576, and ingestion creates others
    on first use (`services.embedding.embedding_index_ensure`). The index is written in SQL
    because an expression index with an opclass needs django.contrib.postgres's wrappers.
    """

    # The (document, generation) index below serves the foreign key too.
    document = models.ForeignKey(
        Document, on_delete=models.CASCADE, related_name="chunks", db_index=False
    )
    document_version = models.PositiveIntegerField(_("document version"))
    generation = models.PositiveIntegerField(_("ingestion run"))
    position = models.PositiveIntegerField(_("position"))
    heading_path = ArrayField(
        models.CharField(max_length=300), verbose_name=_("headings"), default=list, blank=True
    )
    text = models.TextField(_("text"))
    # jieba-segmented text: PostgreSQL's `simple` parser cannot split Chinese into words.
    search_text = models.TextField()
    search_vector = models.GeneratedField(
        expression=SearchVector("search_text", config="simple"),
        output_field=SearchVectorField(),
        db_persist=True,
    )
    token_count = models.PositiveIntegerField(_("tokens"))
    page = models.PositiveIntegerField(_("page"), null=True, blank=True)
    embedding = VectorField()
    embedding_dimensions = models.PositiveSmallIntegerField()
    # Which model (and vector recipe) made `embedding`; dense search skips other models'.
    embedding_model = models.CharField(max_length=600)
    enabled = models.BooleanField(
        _("enabled"),
        default=True,
        help_text=_("Disabled passages are never found by searches or used for answers."),
    )

    class Meta:
        verbose_name = _("passage")
        verbose_name_plural = _("passages")
        ordering = ["document", "generation", "position"]
        indexes = [
            # Also finds a passage's neighbours (retrieval._neighbours_attach) directly.
            models.Index(
                fields=["document", "generation", "position"], name="chunk_document_position"
            ),
            GinIndex(fields=["search_vector"], name="chunk_search_vector"),
        ]

    def __str__(self) -> str:
        return f"{self.document} #{self.position} (v{self.document_version})"

    def enabled_set(self, enabled: bool) -> bool:
        """Enable or disable in one conditional UPDATE; True if this call changed it."""
        changed = Chunk.objects.filter(pk=self.pk).exclude(enabled=enabled).update(enabled=enabled)
        self.enabled = enabled
        return bool(changed)

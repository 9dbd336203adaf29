"""The models that bots, knowledge bases and LLM review run: a GGUF that llama.cpp loads in
the worker, or a model on an OpenAI-compatible server (vLLM, SGLang, llama-server).

`ModelProfile` moved here from the bots app (issue 10) and keeps its table,
`bots_modelprofile`: moving a table buys nothing and would break every raw query and
dump that names it.
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.core.fields import EncryptedTextField
from apps.inference.engine.base import EngineSpec, ModelSpec, RemoteSpec

# llama.cpp caps the sequences of one context (LLAMA_MAX_SEQ = 256); stay well inside it.
MAX_SLOTS = 64
MAX_PREFIX_CACHE = 32


class ModelProfile(models.Model):
    """A model and how it runs (llama.cpp in the worker, or a remote server); bots share
    profiles, workers cache engines by profile."""

    class Kind(models.TextChoices):
        LOCAL = "local", _("llama.cpp in the inference worker")
        REMOTE = "remote", _("OpenAI-compatible server")

    name = models.CharField(_("name"), max_length=100, unique=True)
    kind = models.CharField(
        _("engine"),
        max_length=10,
        choices=Kind.choices,
        default=Kind.LOCAL,
        help_text=_(
            "Where the model runs: loaded by each inference worker from a GGUF file, or on a "
            "server that speaks the OpenAI chat-completions API (vLLM, SGLang, llama-server, "
            "TGI)."
        ),
    )
    gguf_path = models.CharField(
        _("GGUF path"),
        max_length=500,
        blank=True,
        help_text=_(
            "Absolute path of the .gguf file. The admin checks it here; inference workers load "
            "it from the same path, so mount the models folder on both."
        ),
    )
    base_url = models.URLField(
        _("server URL"),
        max_length=500,
        blank=True,
        help_text=_(
            "Remote engines: the API's base URL up to its version, e.g. http://gpu-1:8000/v1."
        ),
    )
    remote_model = models.CharField(
        _("model name on the server"),
        max_length=200,
        blank=True,
        help_text=_("Remote engines: the name the server serves the model under."),
    )
    api_key = EncryptedTextField(
        _("API key"),
        blank=True,
        help_text=_("Remote engines: sent as a bearer token; empty = none."),
    )
    context_size = models.PositiveIntegerField(
        _("context size"),
        default=4096,
        validators=[MinValueValidator(256), MaxValueValidator(1_048_576)],
        help_text=_("Tokens of context (prompt plus answer) per conversation."),
    )
    n_gpu_layers = models.IntegerField(
        _("GPU layers"),
        default=0,
        validators=[MinValueValidator(-1)],
        help_text=_(
            "Layers offloaded to the GPU: -1 = all layers (needs a CUDA build of "
            "llama-cpp-python), 0 = CPU only."
        ),
    )
    threads = models.PositiveSmallIntegerField(
        _("threads"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(512)],
        help_text=_("CPU threads for decoding; empty = llama.cpp's default."),
    )
    batch_size = models.PositiveIntegerField(
        _("batch size"), default=512, validators=[MinValueValidator(8), MaxValueValidator(65536)]
    )
    slots = models.PositiveSmallIntegerField(
        _("parallel conversations"),
        default=4,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_SLOTS)],
        help_text=_(
            "Conversations each inference worker decodes together in one batch. More slots "
            "raise total throughput at some cost per answer; each slot reserves a context "
            "window of KV cache memory. 1 = one answer at a time. Remote engines: requests "
            "each inference worker keeps in flight on the server; more wait in line."
        ),
    )
    prefix_cache_size = models.PositiveSmallIntegerField(
        _("cached prompts"),
        default=2,
        validators=[MaxValueValidator(MAX_PREFIX_CACHE)],
        help_text=_(
            "Finished prompts kept in memory so that a follow-up question, or another chat "
            "with the same system prompt, starts without recomputing them. Each costs a "
            "context window of KV cache memory. Used only with more than one slot."
        ),
    )
    temperature = models.FloatField(
        _("temperature"), default=0.7, validators=[MinValueValidator(0), MaxValueValidator(2)]
    )
    top_p = models.FloatField(
        _("top-p"), default=0.95, validators=[MinValueValidator(0), MaxValueValidator(1)]
    )
    top_k = models.PositiveIntegerField(_("top-k"), default=40)
    min_p = models.FloatField(
        _("min-p"), default=0.05, validators=[MinValueValidator(0), MaxValueValidator(1)]
    )
    repeat_penalty = models.FloatField(
        _("repeat penalty"), default=1.1, validators=[MinValueValidator(0), MaxValueValidator(5)]
    )
    chat_format = models.CharField(
        _("chat format"),
        max_length=50,
        blank=True,
        help_text=_("llama-cpp-python chat format name; empty = the template inside the GGUF."),
    )
    chat_template = models.TextField(
        _("chat template override"),
        blank=True,
        help_text=_("A Jinja chat template that replaces the model's own; empty = none."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        db_table = "bots_modelprofile"
        verbose_name = _("model profile")
        verbose_name_plural = _("model profiles")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_remote(self) -> bool:
        return self.kind == self.Kind.REMOTE

    def spec(self) -> EngineSpec:
        if self.is_remote:
            return RemoteSpec(
                base_url=self.base_url,
                model=self.remote_model,
                api_key=self.api_key or "",
                concurrency=self.slots,
            )
        return self.local_spec()

    def local_spec(self) -> ModelSpec:
        return ModelSpec(
            path=self.gguf_path,
            n_ctx=self.context_size,
            n_gpu_layers=self.n_gpu_layers,
            n_threads=self.threads,
            n_batch=self.batch_size,
            chat_format=self.chat_format or None,
            chat_template=self.chat_template or None,
            slots=self.slots,
            prefix_cache_size=self.prefix_cache_size if self.slots > 1 else 0,
        )

"""Bots and the conversations they hold in WeCom; the models they run live in `apps.inference`."""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from apps.core.fields import EncryptedTextField
from apps.inference.engine.base import SamplingParams
from apps.inference.models import ModelProfile


class Bot(models.Model):
    """A WeCom AI bot (智能机器人) in callback mode, answered by a local model."""

    name = models.CharField(_("name"), max_length=100)
    slug = models.SlugField(
        _("slug"), max_length=50, unique=True, help_text=_("Part of the callback URL.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    token = EncryptedTextField(_("token"), help_text=_("The bot's callback Token from WeCom."))
    encoding_aes_key = EncryptedTextField(
        _("EncodingAESKey"), help_text=_("The bot's 43-character EncodingAESKey from WeCom.")
    )
    aibotid = models.CharField(
        _("AI bot id"),
        max_length=100,
        blank=True,
        help_text=_("WeCom's aibotid; when set, callbacks for another bot id are refused."),
    )
    model_profile = models.ForeignKey(
        ModelProfile, on_delete=models.PROTECT, related_name="bots", verbose_name=_("model")
    )
    system_prompt = models.TextField(_("system prompt"), blank=True)
    temperature = models.FloatField(
        _("temperature"),
        null=True,
        blank=True,
        validators=[MinValueValidator(0), MaxValueValidator(2)],
        help_text=_("Empty = the model profile's default."),
    )
    max_tokens = models.PositiveIntegerField(
        _("max answer tokens"), default=512, validators=[MinValueValidator(16)]
    )
    context_turns = models.PositiveSmallIntegerField(
        _("context turns"),
        default=5,
        validators=[MaxValueValidator(50)],
        help_text=_("Earlier question/answer pairs of the same user in the same chat to include."),
    )
    welcome_message = models.TextField(
        _("welcome message"),
        blank=True,
        help_text=_("Sent when an employee opens the 1:1 chat; empty = no welcome."),
    )
    allowed_userids = ArrayField(
        models.CharField(max_length=64),
        verbose_name=_("allowed users"),
        default=list,
        blank=True,
        help_text=_("WeCom userids, comma-separated. Empty users and departments = everyone."),
    )
    allowed_departments = ArrayField(
        models.CharField(max_length=100),
        verbose_name=_("allowed departments"),
        default=list,
        blank=True,
        help_text=_("Department names or ids from the employee directory, comma-separated."),
    )
    rate_limit_per_minute = models.PositiveIntegerField(
        _("questions per user per minute"),
        default=10,
        help_text=_("0 = unlimited."),
    )
    knowledge_bases = models.ManyToManyField(
        "knowledge.KnowledgeBase",
        related_name="bots",
        blank=True,
        verbose_name=_("knowledge bases"),
        help_text=_("Answers are grounded in these, within what each employee may read."),
    )
    answer_only_from_sources = models.BooleanField(
        _("answer only from sources"),
        default=True,
        help_text=_(
            "When no passage matches, say so instead of answering from the model's own "
            "knowledge. A knowledge base's own setting wins when it has one."
        ),
    )
    retrieval_top_k = models.PositiveSmallIntegerField(
        _("passages per question"),
        default=4,
        validators=[MinValueValidator(1), MaxValueValidator(20)],
    )
    queue_notice_seconds = models.PositiveSmallIntegerField(
        _("queue notice after (seconds)"),
        default=3,
        validators=[MaxValueValidator(300)],
        help_text=_(
            "When every model slot is busy and the expected wait is longer than this, the "
            "employee's reply bubble says they are queued and at which position, instead "
            "of staying empty. 0 = say so whenever the question has to wait."
        ),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("bot")
        verbose_name_plural = _("bots")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def callback_path(self) -> str:
        return reverse("bots:callback", kwargs={"slug": self.slug})

    def callback_url(self) -> str:
        return settings.PUBLIC_BASE_URL + self.callback_path()

    def sampling(self) -> SamplingParams:
        profile = self.model_profile
        return SamplingParams(
            temperature=profile.temperature if self.temperature is None else self.temperature,
            top_p=profile.top_p,
            top_k=profile.top_k,
            min_p=profile.min_p,
            repeat_penalty=profile.repeat_penalty,
            max_tokens=self.max_tokens,
        )


class Conversation(models.Model):
    """One employee's thread with a bot in one chat (a group or the 1:1 chat)."""

    class ChatType(models.TextChoices):
        SINGLE = "single", _("1:1 chat")
        GROUP = "group", _("group chat")

    bot = models.ForeignKey(
        Bot, on_delete=models.CASCADE, related_name="conversations", verbose_name=_("bot")
    )
    chat_type = models.CharField(_("chat type"), max_length=10, choices=ChatType.choices)
    chat_id = models.CharField(_("chat id"), max_length=128, blank=True)
    userid = models.CharField(_("user"), max_length=64)
    created_at = models.DateTimeField(_("started"), auto_now_add=True)
    last_turn_at = models.DateTimeField(_("last question"), null=True, blank=True)

    class Meta:
        verbose_name = _("conversation")
        verbose_name_plural = _("conversations")
        ordering = ["-last_turn_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["bot", "chat_type", "chat_id", "userid"], name="conversation_unique_thread"
            )
        ]

    def __str__(self) -> str:
        where = self.chat_id if self.chat_type == self.ChatType.GROUP else _("1:1 chat")
        return f"{self.bot} · {self.userid} · {where}"


class Turn(models.Model):
    """One question and its answer; every turn ends answered, failed or rejected."""

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        GENERATING = "generating", _("generating")
        ANSWERED = "answered", _("answered")
        FAILED = "failed", _("failed")
        REJECTED = "rejected", _("rejected")

    TERMINAL = (Status.ANSWERED, Status.FAILED, Status.REJECTED)

    class Feedback(models.IntegerChoices):
        ACCURATE = 1, _("accurate")
        INACCURATE = 2, _("inaccurate")
        CANCELLED = 3, _("feedback withdrawn")

    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="turns")
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="turns", verbose_name=_("conversation")
    )
    msgid = models.CharField(_("message id"), max_length=128)
    stream_id = models.CharField(_("stream id"), max_length=64, unique=True)
    msgtype = models.CharField(_("message type"), max_length=20, default="text")
    question = models.TextField(_("question"))
    answer = models.TextField(_("answer"), blank=True)
    reasoning = models.TextField(_("reasoning"), blank=True)
    withheld_answer = models.TextField(
        _("withheld answer"),
        blank=True,
        help_text=_("What the model wrote when a compliance policy blocked the answer."),
    )
    filter_decisions = models.JSONField(_("policy decisions"), default=list, blank=True)
    sources = models.JSONField(
        _("sources"),
        default=list,
        blank=True,
        help_text=_("The knowledge passages (chunk and document version) the answer used."),
    )
    status = models.CharField(
        _("status"), max_length=12, choices=Status.choices, default=Status.QUEUED
    )
    rejection_reason = models.CharField(_("rejection reason"), max_length=30, blank=True)
    error = models.TextField(_("error"), blank=True)
    response_url = models.TextField(_("response URL"), blank=True)
    response_url_used_at = models.DateTimeField(_("response URL used"), null=True, blank=True)
    stream_closed_at = models.DateTimeField(_("stream finished"), null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    heartbeat_at = models.DateTimeField(_("worker heartbeat"), null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.PositiveIntegerField(_("answer tokens"), default=0)
    received_at = models.DateTimeField(_("received"))
    queued_at = models.DateTimeField(_("queued"), null=True, blank=True)
    first_token_at = models.DateTimeField(_("first token"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    feedback = models.PositiveSmallIntegerField(
        _("feedback"), choices=Feedback.choices, null=True, blank=True
    )
    feedback_detail = models.JSONField(_("feedback detail"), default=dict, blank=True)
    feedback_at = models.DateTimeField(_("feedback received"), null=True, blank=True)

    class Meta:
        verbose_name = _("turn")
        verbose_name_plural = _("turns")
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["bot", "msgid"], name="turn_unique_bot_msgid"),
        ]
        indexes = [
            models.Index(fields=["conversation", "received_at"], name="turn_conversation_time"),
            models.Index(fields=["status", "received_at"], name="turn_status_time"),
        ]

    def __str__(self) -> str:
        return self.question[:60]

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

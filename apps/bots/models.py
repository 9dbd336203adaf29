"""Bots and the conversations they hold in WeCom; the models they run live in `apps.inference`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.bots.metrics import turn_claim_observe, turn_end_observe
from apps.bots.signals import turn_ended_announce
from apps.core.fields import EncryptedTextField
from apps.inference.engine.base import SamplingParams
from apps.inference.models import ModelProfile


class Bot(models.Model):
    """A WeCom AI bot (智能机器人), reached by callbacks or over the long connection."""

    class ConnectionMode(models.TextChoices):
        CALLBACK = "callback", _("callback URL")
        LONG_CONNECTION = "long_connection", _("long connection")

    name = models.CharField(_("name"), max_length=100)
    slug = models.SlugField(
        _("slug"), max_length=50, unique=True, help_text=_("Part of the callback URL.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    connection_mode = models.CharField(
        _("connection mode"),
        max_length=20,
        choices=ConnectionMode.choices,
        default=ConnectionMode.CALLBACK,
        help_text=_(
            "Callback: WeCom calls this server's public URL. Long connection: this server "
            "dials out to WeCom, no public URL needed. A bot uses one or the other."
        ),
    )
    token = EncryptedTextField(
        _("token"), blank=True, help_text=_("The bot's callback Token from WeCom.")
    )
    encoding_aes_key = EncryptedTextField(
        _("EncodingAESKey"),
        blank=True,
        help_text=_("The bot's 43-character EncodingAESKey from WeCom."),
    )
    aibotid = models.CharField(
        _("AI bot id"),
        max_length=100,
        blank=True,
        help_text=_(
            "WeCom's aibotid (the BotID); when set, callbacks for another bot id are refused. "
            "Required for the long connection."
        ),
    )
    longconn_secret = EncryptedTextField(
        _("long-connection secret"),
        blank=True,
        help_text=_("The Secret WeCom shows for the bot's long connection."),
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
    welcome_questions = models.TextField(
        _("suggested questions"),
        blank=True,
        help_text=_(
            "One per line, up to 6: the welcome becomes a card with a button per question, "
            "and a click asks that question."
        ),
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
    no_answer_reply = models.TextField(
        _("reply when the sources do not answer"),
        blank=True,
        help_text=_(
            "Sent without asking the model when every knowledge base answers only from "
            "sources and no passage the employee may read is relevant enough; empty = a "
            "standard reply in the bot's reply language."
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
    url_verified_at = models.DateTimeField(
        _("callback URL verified"),
        null=True,
        blank=True,
        help_text=_("When WeCom last verified the callback URL (saving it in WeCom's console)."),
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("bot")
        verbose_name_plural = _("bots")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def url_verified_record(self) -> None:
        """WeCom verified the callback URL just now (its console's Save button)."""
        self.url_verified_at = timezone.now()
        Bot.objects.filter(pk=self.pk).update(url_verified_at=self.url_verified_at)

    def welcome_question_list(self) -> list[str]:
        return [line.strip() for line in self.welcome_questions.splitlines() if line.strip()][:6]

    @property
    def uses_long_connection(self) -> bool:
        return self.connection_mode == self.ConnectionMode.LONG_CONNECTION

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


# WeCom accepts a response_url for one hour after the message (101138).
RESPONSE_URL_VALID = timedelta(hours=1)
# WeCom stops a stream 6 minutes after the user's message: older turns are no longer in flight.
WECOM_STREAM_LIFETIME = timedelta(minutes=6)


class TurnQuerySet(models.QuerySet["Turn"]):
    """The selections of a turn's life: which turns a worker may take, which nobody answers."""

    def claimable(self, *, now: datetime, lease: timedelta) -> TurnQuerySet:
        """Queued, or generating by a worker whose heartbeat lease ran out (it died)."""
        return self.filter(
            Q(status=Turn.Status.QUEUED)
            | Q(status=Turn.Status.GENERATING, heartbeat_at__lt=now - lease)
            | Q(status=Turn.Status.GENERATING, heartbeat_at__isnull=True)
        )

    def sweepable(self, *, now: datetime, lease: timedelta, grace: timedelta) -> TurnQuerySet:
        """Open turns the sweeper looks at: never enqueued, waiting a while, or orphaned.

        A live generating turn (fresh heartbeat) is left alone; everything else is either
        enqueued again or, once its stream window is closing, failed inside it.
        """
        return self.filter(
            Q(status=Turn.Status.QUEUED, received_at__lt=now - grace)
            | Q(status=Turn.Status.GENERATING, heartbeat_at__lt=now - lease)
            | Q(status=Turn.Status.GENERATING, heartbeat_at__isnull=True)
        )

    def response_url_expired(self, *, now: datetime) -> TurnQuerySet:
        return self.filter(received_at__lt=now - RESPONSE_URL_VALID).exclude(response_url="")

    def response_url_forget(self) -> int:
        """WeCom no longer accepts these; a stored one is only a capability waiting to leak."""
        return self.update(response_url="")

    def mark_queued(self, *, now: datetime) -> int:
        """The first enqueue time only; a re-enqueue keeps it."""
        return self.filter(queued_at__isnull=True).update(queued_at=now)

    def close_stream(self, *, now: datetime) -> bool:
        """Finish the WeCom stream once: whoever wins writes its last state, others lose."""
        return bool(self.filter(stream_closed_at__isnull=True).update(stream_closed_at=now))

    def feedback_record(self, *, kind: int, detail: dict[str, Any], now: datetime) -> int:
        return self.update(feedback=kind, feedback_detail=detail, feedback_at=now)

    def longconn_undelivered(self, *, bot_id: int, since: datetime) -> TurnQuerySet:
        """Long-connection answers whose final frame no connector has had acknowledged yet."""
        return self.filter(
            bot_id=bot_id, longconn_delivered_at__isnull=True, received_at__gte=since
        ).exclude(longconn_req_id="")

    def in_flight(self, *, bot_id: int, userid: str, now: datetime) -> TurnQuerySet:
        """The user's messages awaiting their answer at WeCom (final frame not acknowledged),
        none older than a stream's 6-minute life: a stuck turn never blocks the user longer."""
        return self.filter(
            Q(status__in=Turn.OPEN)
            | (Q(longconn_delivered_at__isnull=True) & ~Q(longconn_req_id="")),
            bot_id=bot_id,
            conversation__userid=userid,
            received_at__gte=now - WECOM_STREAM_LIFETIME,
        )

    def longconn_delivered(self, *, now: datetime) -> int:
        """Record the final frame once; a later (duplicate) ack changes nothing."""
        return self.filter(longconn_delivered_at__isnull=True).update(longconn_delivered_at=now)

    def create_rejected(self, *, reason: str, answer: str, now: datetime, **fields: Any) -> Turn:
        """A turn refused at admission is born in its end state: no half-made queued row."""
        turn = self.create(
            status=Turn.Status.REJECTED,
            rejection_reason=reason,
            answer=answer,
            finished_at=now,
            stream_closed_at=now,
            **fields,
        )
        turn_end_observe(turn)
        turn_ended_announce(turn)
        return turn


class Turn(models.Model):
    """One question and its answer; every turn ends answered, failed or rejected.

    The transitions are methods that each do one conditional UPDATE and say whether they
    won: a worker, a redelivered task and the sweeper may race for the same turn, and the
    database decides who gives it its one end. A winner's instance gets the written fields.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        GENERATING = "generating", _("generating")
        ANSWERED = "answered", _("answered")
        FAILED = "failed", _("failed")
        REJECTED = "rejected", _("rejected")

    TERMINAL = (Status.ANSWERED, Status.FAILED, Status.REJECTED)
    # How `error` starts when the answer could not be posted to response_url (health and
    # alerts count these turns).
    RESPONSE_URL_FAILED = "response_url delivery failed"
    OPEN = (Status.QUEUED, Status.GENERATING)

    class Channel(models.TextChoices):
        """The door a question came through; the answer goes back through the same one."""

        CALLBACK = "callback", _("AI bot (callback)")
        LONGCONN = "longconn", _("AI bot (long connection)")
        APP = "app", _("self-built app")
        KF = "kf", _("WeChat customer service")
        MP = "mp", _("Official Account")
        MINIPROGRAM = "miniprogram", _("mini program")
        API = "api", _("OpenAI-compatible API")

    class FixedReplyReason(models.TextChoices):
        """Why a turn got a fixed text instead of the model's answer (dashboards count it)."""

        NO_RELEVANT_SOURCE = "no_relevant_source", _("no relevant passage")
        QUESTION_TOO_LONG = "question_too_long", _("question too long for the model")
        FILE_READ = "file_read", _("file read")
        FILE_REFUSED = "file_refused", _("file refused")

    class Feedback(models.IntegerChoices):
        ACCURATE = 1, _("accurate")
        INACCURATE = 2, _("inaccurate")
        CANCELLED = 3, _("feedback withdrawn")

    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="turns")
    conversation = models.ForeignKey(
        "bots.Conversation",
        on_delete=models.CASCADE,
        related_name="turns",
        verbose_name=_("conversation"),
    )
    msgid = models.CharField(_("message id"), max_length=128)
    channel = models.CharField(
        _("channel"), max_length=12, choices=Channel.choices, default=Channel.CALLBACK
    )
    stream_id = models.CharField(_("stream id"), max_length=64, unique=True)
    msgtype = models.CharField(_("message type"), max_length=20, default="text")
    question = models.TextField(_("question"))
    question_masked = models.TextField(
        _("question as the model sees it"),
        blank=True,
        help_text=_(
            "The question after the compliance policies' masking, stored when it is "
            "admitted; empty = the bot had no policy then."
        ),
    )
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
    fixed_reply_reason = models.CharField(
        _("answered without the model because"),
        max_length=30,
        choices=FixedReplyReason.choices,
        blank=True,
        help_text=_("Empty = the model wrote the answer (or the turn was not answered)."),
    )
    error = models.TextField(_("error"), blank=True)
    response_url = models.TextField(_("response URL"), blank=True)
    response_url_used_at = models.DateTimeField(_("response URL used"), null=True, blank=True)
    longconn_req_id = models.CharField(
        _("long-connection request id"),
        max_length=256,
        blank=True,
        help_text=_("The req_id the answer is sent under; empty for a callback-mode turn."),
    )
    longconn_delivered_at = models.DateTimeField(_("final frame delivered"), null=True, blank=True)
    # What did not fit in a long-connection stream: pushed with aibot_send_msg after its end.
    longconn_rest = models.TextField(_("answer continued by push"), blank=True)
    stream_closed_at = models.DateTimeField(_("stream finished"), null=True, blank=True)
    # Doors that push the answer through a send API (app, 微信客服, Official Account).
    pushed_at = models.DateTimeField(_("answer sent"), null=True, blank=True)
    push_error = models.TextField(_("sending failed"), blank=True)
    attempts = models.PositiveSmallIntegerField(_("attempts"), default=0)
    heartbeat_at = models.DateTimeField(_("worker heartbeat"), null=True, blank=True)
    # The first claim: with queued_at it gives the queue wait (the dashboard's).
    claimed_at = models.DateTimeField(_("first claimed"), null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(_("prompt tokens"), default=0)
    completion_tokens = models.PositiveIntegerField(_("answer tokens"), default=0)
    finish_reason = models.CharField(
        _("finish reason"),
        max_length=12,
        blank=True,
        help_text=_("Why the model stopped: stop, length (max tokens) or deadline (time limit)."),
    )
    received_at = models.DateTimeField(_("received"))
    queued_at = models.DateTimeField(_("queued"), null=True, blank=True)
    first_token_at = models.DateTimeField(_("first token"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    feedback = models.PositiveSmallIntegerField(
        _("feedback"), choices=Feedback.choices, null=True, blank=True
    )
    feedback_detail = models.JSONField(_("feedback detail"), default=dict, blank=True)
    feedback_at = models.DateTimeField(_("feedback received"), null=True, blank=True)
    is_test = models.BooleanField(
        _("test chat"),
        default=False,
        help_text=_(
            "Asked from the bot's test chat in the admin, not by an employee in WeCom; "
            "marked in the turn and review lists so it is not counted as real use."
        ),
    )
    variant = models.ForeignKey(  # chosen at admission; null = the bot's own settings
        "bots.BotVariant", models.RESTRICT, null=True, blank=True, verbose_name=_("A/B variant")
    )

    objects = TurnQuerySet.as_manager()

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
            # The dashboard's hourly summaries read turns by arrival time.
            models.Index(fields=["received_at"], name="turn_received"),
            # What every connector tick asks: long-connection answers still to be sent.
            models.Index(
                fields=["bot", "received_at"],
                condition=Q(longconn_delivered_at__isnull=True) & ~Q(longconn_req_id=""),
                name="turn_longconn_undelivered",
            ),
        ]

    def __str__(self) -> str:
        return self.question[:60]

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    def _held(self) -> TurnQuerySet:
        """This row while still open and still on the attempt this instance knows.

        A worker whose lease another worker took over (its attempt is older) can no longer
        change the turn, and neither can the sweeper once a worker claimed it again.
        """
        return Turn.objects.filter(pk=self.pk, status__in=self.OPEN, attempts=self.attempts)

    def is_held(self) -> bool:
        """Whether this instance may still end the turn (checked before delivering anything)."""
        return self._held().exists()

    def _won(self, updated: int, fields: dict[str, Any]) -> bool:
        if updated:
            for name, value in fields.items():
                setattr(self, name, value)
        return bool(updated)

    def claim(self, *, lease: timedelta) -> bool:
        """Take the turn for this worker: queued, or its last worker's lease ran out."""
        now = timezone.now()
        updated = (
            Turn.objects.filter(pk=self.pk)
            .claimable(now=now, lease=lease)
            .update(
                status=self.Status.GENERATING,
                attempts=F("attempts") + 1,
                heartbeat_at=now,
                claimed_at=Coalesce(F("claimed_at"), Value(now)),
                # A worker can take the task before the enqueue stamped it: it waited ~0.
                queued_at=Coalesce(F("queued_at"), Value(now)),
            )
        )
        if updated:
            self.refresh_from_db(
                fields=["status", "attempts", "heartbeat_at", "claimed_at", "queued_at"]
            )
            turn_claim_observe(self)
        return bool(updated)

    def heartbeat(self) -> bool:
        """Renew the lease; False once the turn ended or another worker took it over."""
        fields = {"heartbeat_at": timezone.now()}
        return self._won(
            self._held().filter(status=self.Status.GENERATING).update(**fields), fields
        )

    def first_token(self) -> bool:
        fields = {"first_token_at": timezone.now()}
        updated = self._held().filter(first_token_at__isnull=True).update(**fields)
        return self._won(updated, fields)

    def close_stream(self) -> bool:
        """Win the right to write the stream's last state; a loser learns the stream is closed."""
        now = timezone.now()
        if Turn.objects.filter(pk=self.pk).close_stream(now=now):
            self.stream_closed_at = now
            return True
        self.refresh_from_db(fields=["stream_closed_at"])
        return False

    def finish(self, *, answer: str, reasoning: str, error: str = "") -> bool:
        """End the turn answered, with what the pipeline gathered on the instance.

        Loses when the turn already ended (a late worker after the sweeper failed it).
        """
        fields = {
            "status": self.Status.ANSWERED,
            "answer": answer,
            "reasoning": reasoning,
            "withheld_answer": self.withheld_answer,
            "filter_decisions": self.filter_decisions,
            "sources": self.sources,
            "fixed_reply_reason": self.fixed_reply_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "longconn_rest": self.longconn_rest,
            "finished_at": timezone.now(),
            "error": error,
        }
        updated = self._held().filter(status=self.Status.GENERATING).update(**fields)
        return self._ended(updated, fields)

    def fail(self, *, error: str) -> bool:
        """End the turn failed; loses when it already ended or another attempt holds it."""
        fields = {
            "status": self.Status.FAILED,
            "error": error[:4000],
            "finished_at": timezone.now(),
        }
        return self._ended(self._held().update(**fields), fields)

    def _ended(self, updated: int, fields: dict[str, Any]) -> bool:
        won = self._won(updated, fields)
        if won:
            turn_end_observe(self)
            turn_ended_announce(self)
        return won

    def response_url_take(self) -> tuple[str, str]:
        """Claim the response_url once: `(url, "")`, or `("", why not)`.

        The URL is a bearer capability, so the row forgets it as it is taken (or found
        expired): it is used at most once and never lies around to be read later.
        """
        now = timezone.now()
        with transaction.atomic():
            row = (
                Turn.objects.select_for_update()
                .filter(pk=self.pk)
                .values("response_url", "response_url_used_at", "received_at")
                .first()
            )
            if row is None or row["response_url_used_at"] is not None:
                return "", "response_url already used"
            if not row["response_url"]:
                return "", "answer longer than the stream allows, and WeCom gave no response_url"
            mine = Turn.objects.filter(pk=self.pk)
            if row["received_at"] < now - RESPONSE_URL_VALID:
                mine.response_url_forget()
                self.response_url = ""
                return "", "response_url expired (WeCom accepts it for one hour)"
            mine.update(response_url="", response_url_used_at=now)
        self.response_url, self.response_url_used_at = "", now
        return row["response_url"], ""


# Kept in modules of their own for size; imported here so Django registers them with the app.
from apps.bots.conversation import Conversation  # noqa: E402, F401
from apps.bots.conversation_files import ConversationFile  # noqa: E402, F401
from apps.bots.long_connection import LongConnection  # noqa: E402, F401
from apps.bots.variants import BotVariant  # noqa: E402, F401

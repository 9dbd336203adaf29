"""Compliance records: policies, the hash-chained ledger, review cases and the session archive.

The ledger is append-only in the database itself (triggers, migration 0002); everything an
officer opens or exports leaves an `AccessLog` row, everything an operator changes an
`OperatorAuditEntry`. Services in `apps.audit.services` are the only writers.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from apps.bots.fields import EncryptedTextField

# --- policies -----------------------------------------------------------------------------


class Action(models.TextChoices):
    """What a matching rule does; `ACTION_STRENGTH` orders them when several rules match."""

    ALLOW = "allow", _("allow")
    FLAG = "flag", _("flag for review")
    MASK = "mask", _("mask")
    BLOCK = "block", _("block")


ACTION_STRENGTH = {Action.ALLOW: 0, Action.FLAG: 1, Action.MASK: 2, Action.BLOCK: 3}
PII_OFF = "off"
PII_CHOICES = [(PII_OFF, _("off")), *Action.choices]


class SensitiveWordList(models.Model):
    """A named list of sensitive words, one per line; policies attach lists with an action."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    words = models.TextField(
        _("words"),
        blank=True,
        help_text=_(
            "One word or phrase per line; lines starting with # are comments. Matching ignores "
            "width, case, traditional/simplified script and inserted symbols."
        ),
    )
    word_count = models.PositiveIntegerField(_("word count"), default=0, editable=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("sensitive word list")
        verbose_name_plural = _("sensitive word lists")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: object, **kwargs: object) -> None:
        self.word_count = len(self.word_lines())
        super().save(*args, **kwargs)

    def word_lines(self) -> list[str]:
        """The listed words, without blank lines and comments."""
        return [
            line.strip()
            for line in self.words.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]


class AuditPolicy(models.Model):
    """Which content rules apply to which bots and archive sources, and what they do."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.TextField(_("description"), blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    word_lists = models.ManyToManyField(
        SensitiveWordList,
        through="PolicyWordList",
        related_name="policies",
        blank=True,
        verbose_name=_("sensitive word lists"),
    )
    pii_resident_id = models.CharField(
        _("resident ID numbers"), max_length=10, choices=PII_CHOICES, default=PII_OFF
    )
    pii_mobile = models.CharField(
        _("mobile numbers"), max_length=10, choices=PII_CHOICES, default=PII_OFF
    )
    pii_bank_card = models.CharField(
        _("bank card numbers"), max_length=10, choices=PII_CHOICES, default=PII_OFF
    )
    pii_email = models.CharField(
        _("e-mail addresses"), max_length=10, choices=PII_CHOICES, default=PII_OFF
    )
    refusal_message = models.TextField(
        _("refusal message"),
        blank=True,
        help_text=_("Sent instead of a blocked answer; empty = the built-in message."),
    )
    retention_days = models.PositiveIntegerField(
        _("retention days"),
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text=_(
            "Question, answer and archived message text older than this is purged; empty = "
            "kept. When several policies cover the same bot, the longest retention wins."
        ),
    )
    legal_hold = models.BooleanField(
        _("legal hold"),
        default=False,
        help_text=_("Nothing covered by this policy is purged while the hold is on."),
    )
    legal_hold_reason = models.CharField(_("legal hold reason"), max_length=200, blank=True)
    llm_review_enabled = models.BooleanField(_("LLM review"), default=False)
    llm_review_prompt = models.TextField(
        _("LLM review prompt"),
        blank=True,
        help_text=_("Asks the review model for a 0–1 risk score of a message."),
    )
    llm_review_model = models.ForeignKey(
        "bots.ModelProfile",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("LLM review model"),
        help_text=_(
            "The model that reviews archived conversations; empty = the first model profile. "
            "Pick a larger model than the small default for judgement worth trusting."
        ),
    )
    llm_review_threshold = models.FloatField(
        _("LLM review threshold"),
        default=0.8,
        validators=[MinValueValidator(0), MaxValueValidator(1)],
        help_text=_("Scores at or above this open a review case."),
    )
    bots = models.ManyToManyField(
        "bots.Bot", related_name="audit_policies", blank=True, verbose_name=_("bots")
    )
    archive_sources = models.ManyToManyField(
        "ArchiveSource", related_name="policies", blank=True, verbose_name=_("archive sources")
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(
        _("updated"),
        auto_now=True,
        help_text=_("Compiled matchers are cached per process until this changes."),
    )

    class Meta:
        verbose_name = _("audit policy")
        verbose_name_plural = _("audit policies")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def pii_actions(self) -> dict[str, str]:
        """Detector kind (`apps.audit.filtering.PiiKind` value) → action, for enabled ones."""
        settings_by_kind = {
            "resident_id": self.pii_resident_id,
            "mobile": self.pii_mobile,
            "bank_card": self.pii_bank_card,
            "email": self.pii_email,
        }
        return {kind: action for kind, action in settings_by_kind.items() if action != PII_OFF}


class PolicyWordList(models.Model):
    """A word list attached to a policy, with what a match does under that policy."""

    policy = models.ForeignKey(
        AuditPolicy, on_delete=models.CASCADE, related_name="word_list_rules"
    )
    word_list = models.ForeignKey(
        SensitiveWordList,
        on_delete=models.PROTECT,
        related_name="policy_rules",
        verbose_name=_("word list"),
    )
    action = models.CharField(
        _("action"), max_length=10, choices=Action.choices, default=Action.BLOCK
    )

    class Meta:
        verbose_name = _("word list rule")
        verbose_name_plural = _("word list rules")
        constraints = [
            models.UniqueConstraint(fields=["policy", "word_list"], name="policy_word_list_once")
        ]

    def __str__(self) -> str:
        return f"{self.word_list} → {self.get_action_display()}"


MAX_PATTERN_LENGTH = 500


def regex_problem(pattern: str) -> str | None:
    """Why `pattern` cannot be a rule, or None when it compiles and cannot match empty."""
    if not pattern:
        return gettext("The pattern is empty.")
    if len(pattern) > MAX_PATTERN_LENGTH:
        return gettext("The pattern is longer than %(limit)d characters.") % {
            "limit": MAX_PATTERN_LENGTH
        }
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return gettext("Invalid regular expression: %(error)s") % {"error": exc}
    if compiled.fullmatch(""):
        return gettext("The pattern matches empty text, so it would match everywhere.")
    return None


class RegexRule(models.Model):
    """A regular expression checked against the original text (Python `re` syntax)."""

    policy = models.ForeignKey(AuditPolicy, on_delete=models.CASCADE, related_name="regex_rules")
    name = models.CharField(_("name"), max_length=100, blank=True)
    pattern = models.CharField(_("pattern"), max_length=MAX_PATTERN_LENGTH)
    action = models.CharField(
        _("action"), max_length=10, choices=Action.choices, default=Action.FLAG
    )

    class Meta:
        verbose_name = _("regex rule")
        verbose_name_plural = _("regex rules")
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name or self.pattern

    def clean(self) -> None:
        problem = regex_problem(self.pattern)
        if problem:
            raise ValidationError({"pattern": problem})


# --- ledger -------------------------------------------------------------------------------


class LedgerEntry(models.Model):
    """One link of the SHA-256 hash chain; the database refuses UPDATE, DELETE and TRUNCATE.

    Payloads hold ids, metadata and content fingerprints, never the content, so purging
    expired text leaves every hash verifiable.
    """

    class Kind(models.TextChoices):
        TURN = "turn", _("bot turn")
        ARCHIVE_MESSAGE = "archive_message", _("archived message")
        PURGE = "purge", _("retention purge")
        REVIEW_DECISION = "review_decision", _("review decision")

    seq = models.PositiveBigIntegerField(_("sequence"), unique=True)
    kind = models.CharField(_("kind"), max_length=30, choices=Kind.choices)
    ref = models.CharField(_("object"), max_length=200, help_text=_("app.model:id"))
    payload = models.JSONField(_("payload"))
    payload_hash = models.CharField(_("payload hash"), max_length=64)
    prev_hash = models.CharField(_("previous hash"), max_length=64, unique=True)
    entry_hash = models.CharField(_("entry hash"), max_length=64, unique=True)
    # HMAC of entry_hash under AUDIT_LEDGER_KEY, a secret kept outside the database: whoever
    # rewrites the chain with full database access cannot compute it again.
    entry_mac = models.CharField(_("anchor MAC"), max_length=64, default="", blank=True)
    created_at = models.DateTimeField(_("created"))

    class Meta:
        verbose_name = _("ledger entry")
        verbose_name_plural = _("ledger entries")
        ordering = ["-seq"]
        indexes = [models.Index(fields=["ref"], name="ledger_ref")]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} {self.ref}"


class LedgerCheckpoint(models.Model):
    """The chain head recorded once a day; a rewritten chain no longer matches it."""

    day = models.DateField(_("day"), unique=True)
    seq = models.PositiveBigIntegerField(_("head sequence"))
    head_hash = models.CharField(_("head hash"), max_length=64)
    mac = models.CharField(_("anchor MAC"), max_length=64, default="", blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("ledger checkpoint")
        verbose_name_plural = _("ledger checkpoints")
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.day} #{self.seq} {self.head_hash[:12]}"


# --- session archive ----------------------------------------------------------------------


class ArchiveSource(models.Model):
    """One corporation's session archive (会话内容存档) and the durable pull cursor."""

    class Health(models.TextChoices):
        NEVER = "never", _("never pulled")
        OK = "ok", _("ok")
        WARNING = "warning", _("warning")
        ERROR = "error", _("error")

    name = models.CharField(_("name"), max_length=100, unique=True)
    corp_id = models.CharField(_("corp ID"), max_length=64)
    secret = EncryptedTextField(
        _("archive secret"), help_text=_("The Secret of the session archive app in WeCom.")
    )
    proxy = models.CharField(
        _("proxy"), max_length=200, blank=True, help_text=_("e.g. socks5://10.0.0.1:1080")
    )
    proxy_password = EncryptedTextField(_("proxy password"), blank=True)
    timeout_seconds = models.PositiveSmallIntegerField(
        _("timeout (s)"), default=30, validators=[MinValueValidator(1), MaxValueValidator(300)]
    )
    batch_size = models.PositiveSmallIntegerField(
        _("batch size"),
        default=1000,
        validators=[MinValueValidator(1), MaxValueValidator(1000)],
        help_text=_("Records per GetChatData call (at most 1000)."),
    )
    pull_interval_minutes = models.PositiveSmallIntegerField(
        _("pull every (minutes)"),
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(1440)],
        help_text=_("WeCom keeps records for 5 days only; pull well within that."),
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    cursor = models.PositiveBigIntegerField(
        _("seq cursor"),
        default=0,
        help_text=_("Highest seq stored or quarantined; the next pull starts after it."),
    )
    health = models.CharField(
        _("health"), max_length=10, choices=Health.choices, default=Health.NEVER
    )
    status_message = models.TextField(_("last pull status"), blank=True)
    last_pull_at = models.DateTimeField(_("last pull"), null=True, blank=True)
    last_success_at = models.DateTimeField(_("last successful pull"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("archive source")
        verbose_name_plural = _("archive sources")
        ordering = ["name"]
        permissions = [
            ("review_archivesource", _("Can review cases and messages of this archive source"))
        ]

    def __str__(self) -> str:
        return self.name


class ArchiveKey(models.Model):
    """The RSA private key of one `publickey_ver`; old versions stay for old records."""

    source = models.ForeignKey(ArchiveSource, on_delete=models.CASCADE, related_name="keys")
    publickey_ver = models.PositiveIntegerField(_("public key version"))
    private_key = EncryptedTextField(_("private key (PEM)"))
    fingerprint = models.CharField(
        _("public key SHA-256"), max_length=64, editable=False, blank=True
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("archive key")
        verbose_name_plural = _("archive keys")
        ordering = ["source", "-publickey_ver"]
        constraints = [
            models.UniqueConstraint(fields=["source", "publickey_ver"], name="archive_key_version")
        ]

    def __str__(self) -> str:
        return f"{self.source} v{self.publickey_ver}"


class ArchivedMessage(models.Model):
    """A decrypted archive record, stored once per msgid."""

    class MediaStatus(models.TextChoices):
        NONE = "", _("no media")
        PENDING = "pending", _("pending")
        STORED = "stored", _("stored")
        FAILED = "failed", _("failed")

    source = models.ForeignKey(
        ArchiveSource,
        on_delete=models.PROTECT,
        related_name="messages",
        verbose_name=_("archive source"),
    )
    msgid = models.CharField(_("message id"), max_length=128, unique=True)
    seq = models.PositiveBigIntegerField(_("seq"))
    publickey_ver = models.PositiveIntegerField(_("public key version"))
    action = models.CharField(_("action"), max_length=10)
    sender = models.CharField(_("from"), max_length=128, blank=True)
    tolist = ArrayField(
        models.CharField(max_length=128), verbose_name=_("to"), default=list, blank=True
    )
    roomid = models.CharField(_("group chat id"), max_length=128, blank=True)
    msgtime = models.DateTimeField(_("sent"))
    msgtype = models.CharField(_("message type"), max_length=30)
    text = models.TextField(_("text"), blank=True)
    external = models.BooleanField(_("external"), default=False)
    revoked_msgid = models.CharField(_("recalls message"), max_length=128, blank=True)
    recalled_at = models.DateTimeField(_("recalled"), null=True, blank=True)
    sdkfileid = models.TextField(_("SDK file id"), blank=True)
    media_status = models.CharField(
        _("media"), max_length=10, choices=MediaStatus.choices, default=MediaStatus.NONE, blank=True
    )
    media_path = models.CharField(
        _("media file"), max_length=300, blank=True, help_text=_("Relative to MEDIA_ROOT.")
    )
    media_sha256 = models.CharField(_("media SHA-256"), max_length=64, blank=True)
    media_size = models.PositiveBigIntegerField(_("media bytes"), null=True, blank=True)
    media_error = models.TextField(_("media error"), blank=True)
    policy_action = models.CharField(
        _("policy result"), max_length=10, choices=Action.choices, blank=True
    )
    raw = models.JSONField(_("decrypted record"), default=dict, blank=True)
    llm_review = models.JSONField(
        _("LLM review"),
        default=dict,
        blank=True,
        help_text=_("Per policy id: the model's risk, label and reason for this conversation."),
    )
    llm_review_error = models.TextField(_("LLM review error"), blank=True)
    llm_reviewed_at = models.DateTimeField(_("LLM reviewed"), null=True, blank=True)
    stored_at = models.DateTimeField(_("stored"), auto_now_add=True)
    purged_at = models.DateTimeField(_("content purged"), null=True, blank=True)

    class Meta:
        verbose_name = _("archived message")
        verbose_name_plural = _("archived messages")
        ordering = ["-msgtime"]
        indexes = [
            models.Index(fields=["source", "seq"], name="archived_source_seq"),
            models.Index(fields=["source", "msgtime"], name="archived_source_time"),
            models.Index(fields=["roomid", "msgtime"], name="archived_room_time"),
            models.Index(fields=["sender", "msgtime"], name="archived_sender_time"),
        ]
        permissions = [("export_archivedmessage", _("Can export archived messages"))]

    def __str__(self) -> str:
        return self.msgid


class ArchiveQuarantine(models.Model):
    """A record that could not be stored, kept with its error so the pull can move on."""

    source = models.ForeignKey(ArchiveSource, on_delete=models.CASCADE, related_name="quarantined")
    seq = models.PositiveBigIntegerField(_("seq"), null=True, blank=True)
    msgid = models.CharField(_("message id"), max_length=128, blank=True)
    error = models.TextField(_("error"))
    error_code = models.IntegerField(_("SDK error code"), null=True, blank=True)
    record = models.JSONField(_("record as pulled"), default=dict, blank=True)
    created_at = models.DateTimeField(_("quarantined"), auto_now_add=True)

    class Meta:
        verbose_name = _("quarantined record")
        verbose_name_plural = _("quarantined records")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["source", "seq"],
                condition=Q(seq__isnull=False),
                name="quarantine_source_seq_once",
            )
        ]

    def __str__(self) -> str:
        return f"{self.source} seq {self.seq}: {self.error[:60]}"


# --- review, access, operator audit ------------------------------------------------------------


class ReviewCase(models.Model):
    """A turn or archived message a policy flagged (or blocked), waiting for an officer."""

    class Status(models.TextChoices):
        OPEN = "open", _("open")
        DECIDED = "decided", _("decided")

    class Decision(models.TextChoices):
        NONE = "", _("—")
        DISMISSED = "dismissed", _("no violation")
        CONFIRMED = "confirmed", _("violation confirmed")

    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.OPEN
    )
    decision = models.CharField(
        _("decision"), max_length=10, choices=Decision.choices, default=Decision.NONE, blank=True
    )
    note = models.TextField(_("note"), blank=True)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("assignee"),
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("decided by"),
    )
    decided_at = models.DateTimeField(_("decided"), null=True, blank=True)
    turn = models.ForeignKey(
        "bots.Turn",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("bot turn"),
    )
    archived_message = models.ForeignKey(
        ArchivedMessage,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("archived message"),
    )
    # The scope an officer is assigned to (guardian perms on these), kept even if the
    # source row goes away so the case stays visible to the same people.
    bot = models.ForeignKey(
        "bots.Bot",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("bot"),
    )
    archive_source = models.ForeignKey(
        ArchiveSource,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("archive source"),
    )
    policy = models.ForeignKey(
        AuditPolicy,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="review_cases",
        verbose_name=_("policy"),
    )
    action = models.CharField(_("action"), max_length=10, choices=Action.choices)
    matches = models.JSONField(_("matched rules"), default=list, blank=True)
    created_at = models.DateTimeField(_("opened"), auto_now_add=True)

    class Meta:
        verbose_name = _("review case")
        verbose_name_plural = _("review cases")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="review_status_time")]
        constraints = [
            models.CheckConstraint(
                condition=Q(turn__isnull=True) | Q(archived_message__isnull=True),
                name="review_one_source",
            ),
            models.CheckConstraint(
                condition=Q(status="open", decision="") | ~Q(status="open"),
                name="review_open_undecided",
            ),
        ]
        permissions = [
            ("decide_reviewcase", _("Can decide review cases")),
            ("export_reviewcase", _("Can export review cases")),
            ("assign_reviewcase", _("Can assign officers to bots and archive sources")),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.get_action_display()} · {self.policy or '—'}"

    @property
    def source_ref(self) -> str:
        if self.turn_id:
            return f"bots.turn:{self.turn_id}"
        if self.archived_message_id:
            return f"audit.archivedmessage:{self.archived_message_id}"
        return ""


class AccessLog(models.Model):
    """Who opened or exported which record, and why (asked before the record is shown)."""

    class Action(models.TextChoices):
        VIEW = "view", _("view")
        EXPORT = "export", _("export")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("user"),
    )
    username = models.CharField(_("username"), max_length=150)
    action = models.CharField(_("action"), max_length=10, choices=Action.choices)
    object_type = models.CharField(_("object type"), max_length=100)
    object_id = models.CharField(_("object id"), max_length=64)
    object_repr = models.CharField(_("object"), max_length=200, blank=True)
    reason = models.TextField(_("reason"))
    request_id = models.CharField(_("request id"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("when"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("access log entry")
        verbose_name_plural = _("access log")
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["object_type", "object_id"], name="access_object"),
            models.Index(fields=["username", "created_at"], name="access_user_time"),
        ]

    def __str__(self) -> str:
        return f"{self.username} {self.action} {self.object_type}:{self.object_id}"


class OperatorAuditEntry(models.Model):
    """A change an operator (or the system, actor empty) made, with before/after state."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("actor"),
    )
    actor_username = models.CharField(_("actor username"), max_length=150, blank=True)
    action = models.CharField(
        _("action"), max_length=100, db_index=True, help_text=_("e.g. bots.prompt.update")
    )
    object_type = models.CharField(_("object type"), max_length=100, blank=True)
    object_id = models.CharField(_("object id"), max_length=64, blank=True)
    object_repr = models.CharField(_("object"), max_length=200, blank=True)
    before = models.JSONField(_("before"), null=True, blank=True)
    after = models.JSONField(_("after"), null=True, blank=True)
    request_id = models.CharField(_("request id"), max_length=64, blank=True)
    created_at = models.DateTimeField(_("when"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("operator audit entry")
        verbose_name_plural = _("operator audit")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="operator_object")]

    def __str__(self) -> str:
        return f"{self.actor_username or 'system'} {self.action} {self.object_repr}"

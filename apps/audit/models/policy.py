"""Policies: sensitive word lists, regex rules and what a match does."""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _


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
        "inference.ModelProfile",
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

"""A/B variants of a bot: another model or system prompt for a stable share of its users.

A model of its own module (imported by `apps.bots.models`) so the models module stays
within its size budget. Each user falls into one of 100 buckets by a hash of the bot and
the userid; a variant owns as many buckets as its weight (percent), and the buckets no
variant owns are the control, the bot's own settings. The buckets a variant owns are kept
on its row, so changing one weight moves only the users that change has to move.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.inference.models import ModelProfile

if TYPE_CHECKING:
    from apps.bots.models import Turn

BUCKETS = 100
WEIGHTS_OVER = _("The shares of a bot's enabled variants add up to more than 100.")


def user_bucket(*, bot_id: int, userid: str) -> int:
    """The user's bucket (0..99) for this bot: the same in every process and after restarts.

    SHA-256 and not `hash()`, which Python salts per process; the bot id is part of it, so
    a user is not in the first variant of every bot at once.
    """
    digest = hashlib.sha256(f"{bot_id}:{userid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class BotVariant(models.Model):
    """Another model and/or system prompt, tried on `weight` percent of a bot's users."""

    bot = models.ForeignKey(
        "bots.Bot", on_delete=models.CASCADE, related_name="variants", verbose_name=_("bot")
    )
    name = models.CharField(_("name"), max_length=60)
    weight = models.PositiveSmallIntegerField(
        _("share of users (%)"),
        validators=[MinValueValidator(1), MaxValueValidator(BUCKETS)],
        help_text=_(
            "The enabled variants of a bot share at most 100 together; the rest is the control."
        ),
    )
    model_profile = models.ForeignKey(
        ModelProfile,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="bot_variants",
        verbose_name=_("model"),
        help_text=_("Empty = the bot's model."),
    )
    system_prompt = models.TextField(
        _("system prompt"), blank=True, help_text=_("Empty = the bot's system prompt.")
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    # The buckets this variant answers (kept by `variant_buckets_assign`); empty when disabled.
    buckets = ArrayField(
        models.PositiveSmallIntegerField(), verbose_name=_("buckets"), default=list, editable=False
    )
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("A/B variant")
        verbose_name_plural = _("A/B variants")
        ordering = ["bot", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["bot", "name"], name="botvariant_unique_name"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.model_profile_id is None and not self.system_prompt.strip():
            raise ValidationError(
                _("A variant changes the model, the system prompt or both; set at least one.")
            )


def turn_profile_id(turn: Turn) -> int:
    """The model profile (and so the queue) a turn's answer runs on: its variant's, else the
    bot's."""
    variant = turn.variant
    if variant is not None and variant.model_profile_id is not None:
        return variant.model_profile_id
    return turn.bot.model_profile_id

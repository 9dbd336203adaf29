"""A/B variants: which variant a user gets, the buckets each owns, and promoting a winner.

A turn records its variant when it is admitted, and the worker answers it with that
variant's model and prompt; the comparison of variants is `apps.bots.variant_comparison`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from apps.audit.services.operator_audit import (
    model_snapshot,
    operator_audit_record,
    snapshot_changes,
)
from apps.bots.models import Bot, Turn
from apps.bots.variants import BUCKETS, WEIGHTS_OVER, BotVariant, user_bucket

VARIANT_ACTION = "bots.variant"


def variant_for_user(*, bot: Bot, userid: str) -> BotVariant | None:
    """The enabled variant whose buckets hold the user's, or None for the control."""
    bucket = user_bucket(bot_id=bot.pk, userid=userid)
    return (
        BotVariant.objects.filter(bot=bot, enabled=True, buckets__contains=[bucket])
        .select_related("model_profile")
        .first()
    )


def variant_buckets_assign(*, bot: Bot) -> None:
    """Give each enabled variant as many buckets as its weight, moving as few as possible.

    A variant keeps the buckets it has (the lowest ones when it shrinks) and a growing one
    takes free buckets, so raising one weight moves only control users into it, and the
    users of the other variants stay where they are.
    """
    with transaction.atomic():
        variants = list(BotVariant.objects.select_for_update().filter(bot=bot).order_by("pk"))
        wanted = {v.pk: (v.weight if v.enabled else 0) for v in variants}
        if sum(wanted.values()) > BUCKETS:
            raise ValidationError(WEIGHTS_OVER)
        kept = {v.pk: sorted(v.buckets)[: wanted[v.pk]] for v in variants}
        taken = {bucket for buckets in kept.values() for bucket in buckets}
        free = [bucket for bucket in range(BUCKETS) if bucket not in taken]
        for variant in variants:
            need = wanted[variant.pk] - len(kept[variant.pk])
            kept[variant.pk] = sorted(kept[variant.pk] + free[:need])
            free = free[need:]
            if kept[variant.pk] != variant.buckets:
                BotVariant.objects.filter(pk=variant.pk).update(buckets=kept[variant.pk])


def _variants_snapshot(bot: Bot) -> list[dict[str, Any]]:
    return [
        {
            "id": v.pk,
            "name": v.name,
            "weight": v.weight,
            "model_profile_id": v.model_profile_id,
            "system_prompt": v.system_prompt,
            "enabled": v.enabled,
        }
        for v in BotVariant.objects.filter(bot=bot).order_by("pk")
    ]


def bot_variants_save(
    *, bot: Bot, save: Callable[[], None], actor: Any, request_id: str = ""
) -> None:
    """Save a bot's variants (`save`, the admin's inline), reassign their buckets, and write
    one entry with the variants before and after, all in one transaction."""
    with transaction.atomic():
        before = _variants_snapshot(bot)
        save()
        variant_buckets_assign(bot=bot)
        after = _variants_snapshot(bot)
        if before != after:
            operator_audit_record(
                actor=actor,
                action=f"{VARIANT_ACTION}.update",
                obj=bot,
                before={"variants": before},
                after={"variants": after},
                request_id=request_id,
                only_changes=False,
            )


def variant_promote(*, variant: BotVariant, actor: Any, request_id: str = "") -> Bot:
    """Make the variant the bot's own settings and end the test: every variant is disabled,
    so all users get the promoted settings from the next question on."""
    with transaction.atomic():
        bot = Bot.objects.select_for_update().get(pk=variant.bot_id)
        variant = BotVariant.objects.select_for_update().get(pk=variant.pk, bot=bot)
        bot_before, variants_before = model_snapshot(bot), _variants_snapshot(bot)
        if variant.model_profile_id is not None:
            bot.model_profile_id = variant.model_profile_id
        if variant.system_prompt.strip():
            bot.system_prompt = variant.system_prompt
        bot.save()
        BotVariant.objects.filter(bot=bot).update(enabled=False, buckets=[])
        bot_before, bot_after = snapshot_changes(bot_before, model_snapshot(bot))
        operator_audit_record(
            actor=actor,
            action=f"{VARIANT_ACTION}.promote",
            obj=bot,
            before={"bot": bot_before, "variants": variants_before},
            after={
                "bot": bot_after,
                "variants": _variants_snapshot(bot),
                "promoted": {"id": variant.pk, "name": variant.name},
            },
            request_id=request_id,
            only_changes=False,
        )
    return bot


def turn_variant_apply(*, turn: Turn) -> None:
    """Put the turn's variant's model and prompt on the bot instance the worker holds.

    Everything that answers a turn reads `turn.bot` (engine, sampling, system prompt,
    metrics labels); setting the variant there once keeps them all on the variant. Only
    this instance changes, never the bot's row.
    """
    variant = turn.variant
    if variant is None:
        return
    if variant.model_profile_id is not None:
        turn.bot.model_profile = variant.model_profile  # type: ignore[assignment]
    if variant.system_prompt.strip():
        turn.bot.system_prompt = variant.system_prompt

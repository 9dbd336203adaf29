"""The figures that compare a bot's A/B variants with its control, aggregated in SQL.

Only employees' questions the bot took count: test-chat turns are not traffic, and a turn
rejected at admission (rate limit, policy, a message it cannot read) says nothing about a
model or a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import (
    Aggregate,
    Avg,
    Case,
    Count,
    Expression,
    F,
    FloatField,
    Func,
    Q,
    Sum,
    When,
)

from apps.bots.models import Bot, Turn
from apps.bots.variants import BotVariant


class _Seconds(Func):
    """An interval between two timestamps in seconds."""

    template = "EXTRACT(EPOCH FROM (%(expressions)s))::double precision"
    output_field = FloatField()


class _Percentile(Aggregate):
    """PostgreSQL's `percentile_cont` (interpolated; rows where the value is NULL skipped)."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, *, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=float(fraction), **extra)


@dataclass(frozen=True)
class VariantFigures:
    """One arm of the test over the period; `variant` None is the control."""

    variant: BotVariant | None
    turns: int = 0
    answered: int = 0
    failed: int = 0
    first_token_p50: float | None = None
    first_token_p95: float | None = None
    total_p50: float | None = None
    total_p95: float | None = None
    prompt_tokens_total: int = 0
    completion_tokens_total: int = 0
    completion_tokens_avg: float | None = None
    thumbs_up: int = 0
    thumbs_down: int = 0

    @property
    def failure_rate(self) -> float | None:
        ended = self.answered + self.failed
        return self.failed / ended if ended else None

    @property
    def thumbs_up_rate(self) -> float | None:
        rated = self.thumbs_up + self.thumbs_down
        return self.thumbs_up / rated if rated else None


def _aggregates() -> dict[str, Expression]:
    answered = Q(status=Turn.Status.ANSWERED)
    first_token = _Seconds(F("first_token_at") - F("received_at"))
    # The time to the whole answer, of answered turns only (a failure's time is its timeout).
    total = Case(When(answered, then=_Seconds(F("finished_at") - F("received_at"))))
    return {
        "turns": Count("id"),
        "answered": Count("id", filter=answered),
        "failed": Count("id", filter=Q(status=Turn.Status.FAILED)),
        "first_token_p50": _Percentile(first_token, fraction=0.5),
        "first_token_p95": _Percentile(first_token, fraction=0.95),
        "total_p50": _Percentile(total, fraction=0.5),
        "total_p95": _Percentile(total, fraction=0.95),
        "prompt_tokens_total": Sum("prompt_tokens", default=0),
        "completion_tokens_total": Sum("completion_tokens", default=0),
        "completion_tokens_avg": Avg("completion_tokens", filter=answered),
        "thumbs_up": Count("id", filter=Q(feedback=Turn.Feedback.ACCURATE)),
        "thumbs_down": Count("id", filter=Q(feedback=Turn.Feedback.INACCURATE)),
    }


def variants_compare(*, bot: Bot, since: datetime, until: datetime) -> list[VariantFigures]:
    """The control first, then every variant of the bot (in the order they were made) that
    is enabled or had turns in the period; one grouped query over the period's turns."""
    rows = (
        Turn.objects.filter(bot=bot, is_test=False, received_at__gte=since, received_at__lt=until)
        .exclude(status=Turn.Status.REJECTED)
        .values("variant_id")
        .annotate(**_aggregates())
        .order_by()
    )
    by_variant = {row.pop("variant_id"): row for row in rows}
    figures = [VariantFigures(variant=None, **by_variant.get(None, {}))]
    for variant in BotVariant.objects.filter(bot=bot).select_related("model_profile"):
        if variant.enabled or variant.pk in by_variant:
            figures.append(VariantFigures(variant=variant, **by_variant.get(variant.pk, {})))
    return figures

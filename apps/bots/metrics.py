"""Counting each turn's end and claim into the process's Prometheus metrics.

Observed after the transaction commits, so a rolled-back end is never counted, and never
allowed to break the turn: a metrics failure is logged and forgotten.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from apps.core import metrics

if TYPE_CHECKING:
    from apps.bots.models import Turn

logger = logging.getLogger(__name__)


def turn_channel(turn: Turn) -> str:
    """The door the question came through."""
    return turn.channel


def _reason(turn: Turn) -> str:
    return turn.rejection_reason or turn.fixed_reply_reason or turn.finish_reason or ""


def _labels(turn: Turn) -> tuple[str, str]:
    bot = turn.bot
    return bot.slug, bot.model_profile.name


def _observe_end(turn: Turn) -> None:
    if turn.is_test:
        return  # the admin's test chat is not traffic
    bot, model = _labels(turn)
    channel = turn_channel(turn)
    metrics.TURNS_ENDED.labels(bot, channel, turn.status, _reason(turn)).inc()
    if turn.finished_at is not None:
        seconds = (turn.finished_at - turn.received_at).total_seconds()
        metrics.TURN_SECONDS.labels(bot, channel, turn.status).observe(max(seconds, 0.0))
    if turn.first_token_at is not None:
        seconds = (turn.first_token_at - turn.received_at).total_seconds()
        metrics.FIRST_TOKEN_SECONDS.labels(bot, model).observe(max(seconds, 0.0))
    if turn.completion_tokens:
        metrics.TOKENS_GENERATED.labels(bot, model).inc(turn.completion_tokens)
    if turn.prompt_tokens:
        metrics.PROMPT_TOKENS.labels(bot, model).inc(turn.prompt_tokens)


def _observe_claim(turn: Turn) -> None:
    if turn.is_test or turn.queued_at is None or turn.attempts != 1:
        return  # a retry's wait measures the lost worker, not the queue
    _, model = _labels(turn)
    seconds = (timezone.now() - turn.queued_at).total_seconds()
    metrics.QUEUE_WAIT_SECONDS.labels(model).observe(max(seconds, 0.0))


def _safely(observe: Callable[[Turn], None], turn: Turn) -> None:
    def run() -> None:
        try:
            observe(turn)
        except Exception:  # metrics never cost an answer
            logger.exception("metrics for turn %s not recorded", turn.pk)

    transaction.on_commit(run)


def turn_end_observe(turn: Turn) -> None:
    """Count the end `turn` just won (its instance carries the written fields)."""
    _safely(_observe_end, turn)


def turn_claim_observe(turn: Turn) -> None:
    _safely(_observe_claim, turn)

"""Recovering turns nobody is answering: enqueue them again while they can still make it.

A saved turn can lose its task in three ways: the enqueue failed (broker down after the
commit), the task was acknowledged and gone (a database or broker error), or the worker
process died holding it (its unacknowledged message only comes back after the broker's
visibility timeout, far beyond WeCom's window). The sweeper finds each by its state and
sends the task again; a turn that has used its attempts, or whose stream window is
closing, is failed while the bubble is still polled, so the apology lands in it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.bots.models import Turn
from apps.bots.services.deliver import turn_fail
from apps.bots.services.stream import reply_language
from apps.bots.services.variants import turn_variant_apply
from apps.inference.model_workers import InferenceWorker, inference_workers_live
from wecom_ai import queues

logger = logging.getLogger(__name__)

# A turn saved this recently may still have its enqueue in flight (on_commit).
ENQUEUE_GRACE = timedelta(seconds=10)
# A queued turn whose model no live inference worker serves is failed after this long, with
# a message saying why, instead of waiting out WeCom's window (a worker that starts later,
# or restarts, is given this much time to come up and announce itself).
NO_WORKER_GRACE = timedelta(seconds=30)
# Turns not answered this long before the stream deadline are failed: the sweep runs every
# 10 s, so the apology is in the bubble before WeCom stops polling.
WINDOW_MARGIN = timedelta(seconds=30)


def turns_recover() -> int:
    """One sweep: returns how many turns were failed (the rest were enqueued or left alone)."""
    now = timezone.now()
    lease = timedelta(seconds=settings.TURN_LEASE_SECONDS)
    failed = 0
    workers: list[InferenceWorker] | None = None  # read once per sweep, when first needed
    for turn in Turn.objects.sweepable(now=now, lease=lease, grace=ENQUEUE_GRACE).select_related(
        "bot__model_profile", "variant__model_profile"
    ):
        turn_variant_apply(turn=turn)  # its queue and model are its A/B variant's
        if _unserved_for_long(turn, now=now):
            if workers is None:
                workers = inference_workers_live()
            profile_id = turn.bot.model_profile_id
            if not any(worker.serves(profile_id) for worker in workers):
                failed += turn_fail_unserved(turn=turn)
                continue
        failed += turn_recover(turn=turn, now=now)
    Turn.objects.response_url_expired(now=now).response_url_forget()
    return failed


def turn_closing_at(turn: Turn) -> datetime:
    """After this a turn no longer starts over: its apology must make the stream window."""
    window = timedelta(seconds=settings.WECOM_STREAM_DEADLINE_SECONDS) - WINDOW_MARGIN
    timeout = timedelta(seconds=settings.TURN_GENERATION_TIMEOUT_SECONDS)
    return turn.received_at + min(window, timeout)


def _unserved_for_long(turn: Turn, *, now: datetime) -> bool:
    """Queued (sent, not started) for longer than a live worker needs to take it."""
    return (
        turn.status == Turn.Status.QUEUED
        and turn.queued_at is not None
        and turn.queued_at < now - NO_WORKER_GRACE
    )


def turn_fail_unserved(*, turn: Turn) -> bool:
    """Fail a turn whose model no inference worker serves, saying so in the bubble."""
    profile = turn.bot.model_profile
    with reply_language():
        shown = _(
            "No inference worker is running for this bot's model right now, so the "
            "question cannot be answered. Please tell your IT department."
        )
    return turn_fail(
        turn=turn,
        error=f"no live inference worker serves model profile {profile.name!r} (id {profile.pk})",
        shown=shown,
    )


def turn_recover(*, turn: Turn, now: datetime) -> bool:
    """Enqueue the turn again or fail it; True when it was failed."""
    from apps.bots.services.receive import turn_enqueue

    requeue_after = timedelta(seconds=settings.TURN_REQUEUE_SECONDS)
    if now >= turn_closing_at(turn):
        return turn_fail(turn=turn, error="no worker finished this turn within WeCom's window")
    priority = queues.PRIORITY_RESENT
    if turn.status == Turn.Status.GENERATING:
        if turn.attempts >= settings.TURN_MAX_ATTEMPTS:
            return turn_fail(turn=turn, error=f"its worker was lost {turn.attempts} times")
        once_key = f"turn-requeue:{turn.pk}:{turn.attempts}"
        priority = queues.PRIORITY_RESUMED
    elif turn.queued_at is None:
        once_key = ""  # never enqueued: nothing can be in flight
    elif turn.queued_at < now - requeue_after:
        # Not started for a while: its message may have died with a worker that had it
        # reserved. A duplicate finds the turn claimed or ended and returns at once.
        once_key = f"turn-requeue:{turn.pk}:queued"
    else:
        return False
    if once_key and not cache.add(once_key, 1, timeout=max(1, int(requeue_after.total_seconds()))):
        return False
    logger.info("turn %s (%s, attempt %s) enqueued again", turn.pk, turn.status, turn.attempts)
    turn_enqueue(turn_id=turn.pk, profile_id=turn.bot.model_profile_id, priority=priority)
    return False

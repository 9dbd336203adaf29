"""Answers pushed through a send API, for doors without a stream WeCom pulls.

The self-built app (`message/send`), 微信客服 (`kf/send_msg`) and the Official Account's
customer-service API (`message/custom/send`) deliver the answer after it is written. Each
such door registers a pusher for its channel. When a turn on that channel ends, the push
task is enqueued after the commit; it calls the pusher, records `pushed_at` once, retries
what the pusher says is worth retrying, and records a final failure in `push_error`, so
the admin shows the turn as undelivered with the platform's own error code and message.
The sweeper re-enqueues ended turns whose push was never attempted (a lost enqueue).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.db.models import Q
from django.dispatch import receiver
from django.utils import timezone

from apps.bots.models import Turn
from apps.bots.signals import turn_ended

logger = logging.getLogger(__name__)

# A door's sender: delivers the ended turn's answer (or apology) in full, or raises.
Pusher = Callable[[Turn], None]

_PUSHERS: dict[str, Pusher] = {}

# An ended turn whose push neither succeeded nor failed for this long was never enqueued.
PUSH_LOST_AFTER = timedelta(minutes=2)


@dataclass
class PushError(Exception):
    """A send the platform refused or that never reached it.

    `retryable`: a rate limit, an expired token already refreshed, a network error; not an
    invalid user, an expired reply window or a message the platform rejects.
    """

    errcode: int | None
    errmsg: str
    retryable: bool = False

    def __str__(self) -> str:
        code = "network" if self.errcode is None else str(self.errcode)
        return f"{code} {self.errmsg}".strip()


def pusher_register(*, channel: str, pusher: Pusher) -> None:
    """Called by a door's app at start-up (`AppConfig.ready`)."""
    _PUSHERS[channel] = pusher


def push_channels() -> tuple[str, ...]:
    return tuple(_PUSHERS)


@receiver(turn_ended, dispatch_uid="bots.push.turn_ended")
def _turn_ended(sender: object, turn: Turn, **kwargs: object) -> None:
    if turn.channel in _PUSHERS:
        push_enqueue(turn_id=turn.pk)


def push_enqueue(*, turn_id: int, countdown: float = 0) -> None:
    from apps.bots.tasks import turn_push as turn_push_task

    turn_push_task.apply_async(args=(turn_id,), countdown=countdown)


def turn_push(*, turn_id: int, final_try: bool) -> bool:
    """Push one ended turn's answer through its door; True once delivered (now or before).

    Raises `PushError` when the pusher says a retry may help and this is not the final try;
    otherwise a refusal is recorded on the turn and False returned.
    """
    turn = Turn.objects.select_related("bot", "conversation").get(pk=turn_id)
    if turn.pushed_at is not None or turn.push_error or not turn.is_terminal:
        return turn.pushed_at is not None
    pusher = _PUSHERS.get(turn.channel)
    if pusher is None:
        raise LookupError(f"no pusher for channel {turn.channel!r}")
    try:
        pusher(turn)
    except PushError as exc:
        if exc.retryable and not final_try:
            raise
        logger.warning("turn %s: push through %s failed: %s", turn.pk, turn.channel, exc)
        Turn.objects.filter(pk=turn.pk, pushed_at__isnull=True).update(push_error=str(exc)[:1000])
        return False
    Turn.objects.filter(pk=turn.pk, pushed_at__isnull=True).update(pushed_at=timezone.now())
    return True


def pushes_sweep() -> int:
    """Enqueue again the ended turns of pushing doors whose push never ran (a lost enqueue)."""
    if not _PUSHERS:
        return 0
    now = timezone.now()
    lost = Turn.objects.filter(
        Q(status__in=Turn.TERMINAL),
        channel__in=list(_PUSHERS),
        pushed_at__isnull=True,
        push_error="",
        finished_at__lt=now - PUSH_LOST_AFTER,
        received_at__gte=now - timedelta(days=2),
    ).values_list("pk", flat=True)
    count = 0
    for turn_id in lost[:500]:
        push_enqueue(turn_id=turn_id)
        count += 1
    return count

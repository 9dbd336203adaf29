"""Signals of a turn's life, for the doors that must act when a turn ends."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.db import transaction
from django.dispatch import Signal

if TYPE_CHECKING:
    from apps.bots.models import Turn

logger = logging.getLogger(__name__)

# Sent once per turn with `turn`, after the commit that gave it its one end (answered,
# failed or rejected): doors that push answers through a send API listen to it.
turn_ended = Signal()


def turn_ended_announce(turn: Turn) -> None:
    def send() -> None:
        for receiver, result in turn_ended.send_robust(sender=type(turn), turn=turn):
            if isinstance(result, Exception):
                logger.error("turn %s: %r failed on its end", turn.pk, receiver, exc_info=result)

    transaction.on_commit(send)

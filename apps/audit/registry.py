"""The bots app's side of audit, handed over by bots itself.

Audit sits below bots in the layers (README, "Architecture"), so it never imports bots. Where
audit orchestrates over several data owners (officer scope granted on bots, retention over
turns and archived messages, exports of turns), `BotsConfig.ready()` registers what audit needs
here and audit reads it through `bot_side_get()`. Audit's own relations (`ReviewCase.turn`,
`AuditPolicy.bots`) need nothing from here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model, QuerySet


class TurnsForUser(Protocol):
    def __call__(self, *, user: Any) -> QuerySet[Any]: ...


class TurnsPurge(Protocol):
    def __call__(self, *, bot: Any, cutoff: dt.datetime, limit: int) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class BotSide:
    # The model the `bots.review_bot` object permission is granted on.
    bot_model: type[Model]
    # The turns (transcripts) an officer may read: those of the bots assigned to them.
    turns_for_user: TurnsForUser
    # One turn as a line of an export file.
    turn_export_record: Callable[[Any], dict[str, Any]]
    # Blank the content of up to `limit` terminal turns of `bot` received before `cutoff`,
    # except those under an open review case; returns their ids (empty: nothing left). Runs
    # in the caller's transaction, so the ledger entry and the purge commit together.
    turns_purge: TurnsPurge
    # The fields `turns_purge` blanks, named in the ledger entry.
    turn_purged_fields: tuple[str, ...]


_registered: list[BotSide] = []


def bot_side_register(*, side: BotSide) -> None:
    """Called once by `BotsConfig.ready()`; a second call replaces the first."""
    _registered[:] = [side]


def bot_side_get() -> BotSide:
    if not _registered:
        raise ImproperlyConfigured(
            "apps.audit needs the bots side: add apps.bots to INSTALLED_APPS (its "
            "AppConfig.ready() registers it)."
        )
    return _registered[0]

"""What a long connection is doing, in a form the app can persist and show on the bot page."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class ConnectionPhase(StrEnum):
    """The connection loop's states; STOPPED_KICKED and AUTH_FAILED are final."""

    IDLE = "idle"
    CONNECTING = "connecting"
    SUBSCRIBING = "subscribing"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    # Another subscriber took this bot over (disconnected_event): do not fight for it.
    STOPPED_KICKED = "stopped_kicked"
    # The secret was refused too many times in a row: an admin must fix it.
    AUTH_FAILED = "auth_failed"
    CLOSED = "closed"


FINAL_PHASES = frozenset(
    {ConnectionPhase.STOPPED_KICKED, ConnectionPhase.AUTH_FAILED, ConnectionPhase.CLOSED}
)


class LongConnError(Exception):
    """Base of the long-connection client's errors."""


class AuthGiveUp(LongConnError):
    """The subscribe was refused `attempts` times in a row; the client stopped trying."""

    def __init__(self, *, attempts: int, errcode: int, errmsg: str) -> None:
        super().__init__(
            f"WeCom refused the bot's long-connection secret {attempts} times in a row "
            f"(errcode {errcode}: {errmsg}); check the BotID and Secret"
        )
        self.attempts = attempts
        self.errcode = errcode
        self.errmsg = errmsg


class AckError(LongConnError):
    """WeCom answered a command with a non-zero errcode."""

    def __init__(self, *, cmd: str, errcode: int, errmsg: str) -> None:
        super().__init__(f"{cmd} refused: errcode {errcode}: {errmsg}")
        self.cmd = cmd
        self.errcode = errcode
        self.errmsg = errmsg


class AckTimeout(LongConnError):
    """No ack arrived for a command within the timeout."""


class NotConnected(LongConnError):
    """A command was sent while no subscribed connection was open."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass
class ConnectionState:
    """The fields the bot page shows; `as_dict` is JSON-ready for a row or a cache entry."""

    phase: ConnectionPhase = ConnectionPhase.IDLE
    connected_since: datetime | None = None
    last_message_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    # Connection attempts since the last successful subscribe (0 while connected).
    attempts: int = 0
    # Refused subscribes in a row; reaching the client's limit means AUTH_FAILED.
    auth_failures: int = 0
    # Successful subscribes over the client's life: more than one means it reconnected.
    subscribes: int = 0

    def error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = datetime.now(UTC)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "connected_since": _iso(self.connected_since),
            "last_message_at": _iso(self.last_message_at),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "attempts": self.attempts,
            "auth_failures": self.auth_failures,
            "subscribes": self.subscribes,
        }


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential reconnect delay, 1 s doubling to 30 s, with ± jitter so that many bots
    cut off together do not all come back in the same second."""

    initial: float = 1.0
    maximum: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The wait before attempt number `attempt` + 1 (attempt counts from 1)."""
        base = min(self.maximum, self.initial * 2.0 ** min(max(0, attempt - 1), 32))
        spread = base * self.jitter
        value = base + float((rng or random).uniform(-spread, spread))
        return max(0.0, min(self.maximum, value))

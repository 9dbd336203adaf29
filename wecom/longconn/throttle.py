"""Per-conversation send budget: WeCom allows 30 messages a minute and 1,000 an hour per
conversation, counted over replies and proactive pushes together.

The budget is a sliding window per limit. Stream updates ask for a slot while keeping one in
reserve, so the final frame of an answer always finds room (at worst after a wait); only
the final frame may take the last slot.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Messages allowed per window. Tests shrink the windows to run in a second, not an hour."""

    per_minute: int = 30
    per_hour: int = 1000
    minute_seconds: float = 60.0
    hour_seconds: float = 3600.0
    # Added to each window on the sending side: WeCom counts when a frame arrives, and a
    # frame delayed on the way must not make an earlier one seem to fall inside its window.
    safety_seconds: float = 1.0

    def windows(self) -> tuple[tuple[int, float], ...]:
        return (
            (self.per_minute, self.minute_seconds + self.safety_seconds),
            (self.per_hour, self.hour_seconds + self.safety_seconds),
        )

    def exact(self) -> RateLimits:
        """The same limits without the safety margin, as the receiving side counts them."""
        return replace(self, safety_seconds=0.0)

    @property
    def min_update_interval(self) -> float:
        """Spacing that spreads the minute's budget evenly instead of spending it in a burst."""
        return (self.minute_seconds + self.safety_seconds) / self.per_minute


class RateBudget:
    """Sends already made in one conversation, and when the next one may go."""

    def __init__(self, limits: RateLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._sent: deque[float] = deque()

    def _prune(self, now: float) -> None:
        horizon = now - max(span for _, span in self.limits.windows())
        while self._sent and self._sent[0] <= horizon:
            self._sent.popleft()

    def wait_seconds(self, *, reserve: int = 0) -> float:
        """0 if a send now leaves `reserve` slots in every window, else the seconds to wait."""
        now = self._clock()
        self._prune(now)
        wait = 0.0
        for limit, span in self.limits.windows():
            recent = [t for t in self._sent if t > now - span]
            allowed = limit - reserve
            if allowed <= 0:
                raise ValueError("reserve leaves no room in the rate window")
            if len(recent) >= allowed:
                # The send that must leave the window first is the one `allowed` places back.
                wait = max(wait, recent[len(recent) - allowed] + span - now)
        return wait

    def take(self) -> None:
        """Record a send made now."""
        self._sent.append(self._clock())

    @property
    def sent_count(self) -> int:
        self._prune(self._clock())
        return len(self._sent)


class RateBudgets:
    """One budget per conversation key, shared by every stream and push of a client."""

    def __init__(self, limits: RateLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._budgets: dict[str, RateBudget] = {}

    def of(self, conversation_key: str) -> RateBudget:
        budget = self._budgets.get(conversation_key)
        if budget is None:
            budget = self._budgets[conversation_key] = RateBudget(self.limits, clock=self._clock)
        return budget

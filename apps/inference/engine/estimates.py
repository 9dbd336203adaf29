"""How long a request submitted now would wait for a batching slot.

Kept out of the scheduler because it is arithmetic on running averages: the scheduler
publishes what each slot has left after every step, and any thread may ask for an estimate.
"""

from __future__ import annotations

import heapq
import math
import threading
from collections.abc import Iterable, Sequence

from apps.inference.engine.sequence import BatchingGeneration, RunningSequence

# How fast the step-time and answer-length averages behind the estimate adapt.
EWMA_WEIGHT = 0.2


class WaitEstimator:
    """Running averages of step time and answer length, and each slot's remaining steps.

    `lock` is the engine's condition guarding its waiting queue, so an estimate sees the
    queue and the published figures from the same moment.
    """

    def __init__(self, *, slots: int, chunk: int, lock: threading.Condition) -> None:
        self._lock = lock
        self._chunk = chunk  # prompt tokens a prefilling sequence decodes per step
        self._slot_steps_left: list[float] = [0.0] * slots
        self._step_seconds: float | None = None
        self._answer_tokens: float | None = None

    def wait_seconds(self, waiting: Iterable[BatchingGeneration]) -> float:
        """Replay the queue against the slots' expected remaining steps (prompt chunks left,
        then the average answer length capped by max_tokens), at the average step time.
        """
        with self._lock:
            steps_left = list(self._slot_steps_left)
            queued = [self._expected_steps(generation) for generation in waiting]
            step_seconds = self._step_seconds
        if step_seconds is None:
            step_seconds = 0.0
        heapq.heapify(steps_left)
        for steps in queued:
            heapq.heappush(steps_left, heapq.heappop(steps_left) + steps)
        return steps_left[0] * step_seconds

    def _expected_steps(self, generation: BatchingGeneration) -> float:
        """Decode steps a queued request will hold its slot for; call with the lock held."""
        prefill = math.ceil(len(generation.prompt) / self._chunk)
        answer: float = generation.request.sampling.max_tokens
        if self._answer_tokens is not None:
            answer = min(answer, self._answer_tokens)
        return prefill + answer

    def publish(
        self, running: Sequence[RunningSequence | None], step_seconds: float | None
    ) -> None:
        """Record what each slot has left after a step, and how long the step took."""
        steps_left = []
        for sequence in running:
            if sequence is None:
                steps_left.append(0.0)
                continue
            generation = sequence.generation
            prompt_left = max(0, len(generation.prompt) - sequence.n_past)
            answer = float(generation.request.sampling.max_tokens)
            if self._answer_tokens is not None:
                answer = min(answer, self._answer_tokens)
            answer_left = max(1.0, answer - len(sequence.completion))
            steps_left.append(math.ceil(prompt_left / self._chunk) + answer_left)
        with self._lock:
            self._slot_steps_left = steps_left
            previous = self._step_seconds
            if step_seconds is None:
                return
            self._step_seconds = (
                step_seconds
                if previous is None
                else previous + EWMA_WEIGHT * (step_seconds - previous)
            )

    def record_answer_length(self, tokens: int) -> None:
        with self._lock:
            previous = self._answer_tokens
            self._answer_tokens = (
                float(tokens) if previous is None else previous + EWMA_WEIGHT * (tokens - previous)
            )

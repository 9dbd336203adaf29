"""A bot conversation as the chat thread an officer reads: bubbles in time order.

The turn row keeps policy decisions and cited sources as JSON for the ledger and exports;
officers read them here as words (which policy, which word, what it did) and as the
passage text a citation points to, never as raw JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.utils.translation import gettext as _

from apps.audit.models import Action, AuditPolicy
from apps.bots.models import Turn
from apps.knowledge.models import Chunk

SUBJECTS = {"question": "question", "answer": "answer"}


@dataclass(frozen=True)
class PolicyHit:
    subject: str  # "question" or "answer"
    policy: str
    label: str
    word: str
    action: str


@dataclass(frozen=True)
class Citation:
    number: int
    title: str
    heading: str
    file: str
    knowledge_base: str
    score: float | None
    passage: str | None  # None: the passage is no longer stored (document re-indexed)


@dataclass
class TurnBubbles:
    """One turn: the asker's bubble and the bot's bubble with what the officer must see."""

    turn: Turn
    question_hits: list[PolicyHit] = field(default_factory=list)
    answer_hits: list[PolicyHit] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    feedback_note: str = ""

    @property
    def first_token_seconds(self) -> float | None:
        turn = self.turn
        if turn.first_token_at is None:
            return None
        return (turn.first_token_at - turn.received_at).total_seconds()

    @property
    def total_seconds(self) -> float | None:
        turn = self.turn
        if turn.finished_at is None:
            return None
        return (turn.finished_at - turn.received_at).total_seconds()


def _action_label(action: str) -> str:
    try:
        return str(Action(action).label)
    except ValueError:
        return action


def _hits(decisions: Iterable[dict[str, Any]], names: dict[int, str]) -> list[PolicyHit]:
    hits = []
    for decision in decisions:
        subject = str(decision.get("subject", "question"))
        for match in decision.get("matches", []):
            policy_id = match.get("policy")
            hits.append(
                PolicyHit(
                    subject=subject,
                    policy=names.get(policy_id, f"#{policy_id}"),
                    label=str(match.get("label") or ""),
                    word=str(match.get("word") or ""),
                    action=_action_label(str(match.get("action") or "")),
                )
            )
    return hits


def _feedback_note(detail: dict[str, Any]) -> str:
    parts = []
    if detail.get("content"):
        parts.append(str(detail["content"]))
    reasons = detail.get("inaccurate_reason_list")
    if reasons:
        parts.append(_("reasons: %(reasons)s") % {"reasons": ", ".join(map(str, reasons))})
    return " · ".join(parts)


def cited_chunks(turns: Iterable[Turn]) -> list[Chunk]:
    """The stored passages the turns cite: the thread shows their text, so they are logged
    with the turns (as a knowledge search logs the passages it returns)."""
    ids = {source.get("chunk") for turn in turns for source in turn.sources or []}
    return list(Chunk.objects.select_related("document").filter(pk__in=ids).order_by("pk"))


def turns_thread(turns: Sequence[Turn]) -> list[TurnBubbles]:
    """The turns oldest first, with policy names and cited passages fetched in two queries."""
    ordered = sorted(turns, key=lambda turn: (turn.received_at, turn.pk))
    policy_ids = {
        match.get("policy")
        for turn in ordered
        for decision in turn.filter_decisions or []
        for match in decision.get("matches", [])
    }
    names = dict(AuditPolicy.objects.filter(pk__in=policy_ids).values_list("pk", "name"))
    chunk_ids = {source.get("chunk") for turn in ordered for source in turn.sources or []}
    passages = dict(Chunk.objects.filter(pk__in=chunk_ids).values_list("pk", "text"))
    thread = []
    for turn in ordered:
        hits = _hits(turn.filter_decisions or [], names)
        thread.append(
            TurnBubbles(
                turn=turn,
                question_hits=[hit for hit in hits if hit.subject != "answer"],
                answer_hits=[hit for hit in hits if hit.subject == "answer"],
                citations=[
                    Citation(
                        number=number,
                        title=str(source.get("title") or source.get("file") or ""),
                        heading=str(source.get("heading") or ""),
                        file=str(source.get("file") or ""),
                        knowledge_base=str(source.get("knowledge_base") or ""),
                        score=source.get("score"),
                        passage=passages.get(source.get("chunk")),
                    )
                    for number, source in enumerate(turn.sources or [], start=1)
                ],
                feedback_note=_feedback_note(turn.feedback_detail or {}),
            )
        )
    return thread

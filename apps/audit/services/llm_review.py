"""Optional LLM review of archived conversations, for risks no word list or regex names.

Messages are reviewed per conversation (group chat, or the pair of people in a 1:1 chat)
because a single message rarely shows intent. The local model is asked for a JSON verdict;
small models often answer with something else, and such an answer is recorded as an error
and never opens a case, so a confused model cannot flood officers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.audit.models import Action, ArchivedMessage, AuditPolicy, ReviewCase
from apps.audit.streams import review_cases_publish
from apps.inference.engine.base import ChatRequest, EngineError, SamplingParams
from apps.inference.model_load import profile_engine
from apps.inference.models import ModelProfile

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = (
    "You review workplace chat transcripts for compliance risks (leaking confidential "
    "information, bribery, harassment, fraud). Rate the transcript below.\n"
    'Answer with one JSON object only: {"risk": <number 0 to 1>, "label": "<short '
    'category>", "reason": "<one sentence>"}.\n\nTranscript:\n{transcript}'
)
TRANSCRIPT_PLACEHOLDER = "{transcript}"
MAX_TRANSCRIPT_CHARS = 4000
MAX_ANSWER_TOKENS = 160
ANSWER_TIMEOUT_SECONDS = 120.0


class LlmVerdictError(ValueError):
    """The model's answer holds no usable verdict."""


@dataclass(frozen=True, slots=True)
class LlmVerdict:
    risk: float
    label: str
    reason: str

    def as_record(self) -> dict[str, Any]:
        return {"risk": self.risk, "label": self.label, "reason": self.reason}


def llm_verdict_parse(answer: str) -> LlmVerdict:
    """The first JSON object in `answer` that carries a numeric risk in 0..1.

    Models wrap JSON in prose or code fences, so every `{` is tried as the start of an
    object; anything else raises `LlmVerdictError` with a short description.
    """
    decoder = json.JSONDecoder()
    position = answer.find("{")
    problem = "no JSON object in the answer"
    while position != -1:
        try:
            value, _end = decoder.raw_decode(answer, position)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            risk = value.get("risk")
            if isinstance(risk, str):
                try:
                    risk = float(risk)
                except ValueError:
                    risk = None
            if isinstance(risk, bool) or not isinstance(risk, int | float):
                problem = "the JSON object has no numeric risk"
            elif not math.isfinite(risk) or not 0 <= risk <= 1:
                problem = f"risk {risk!r} is outside 0..1"
            else:
                return LlmVerdict(
                    risk=float(risk),
                    label=str(value.get("label") or "")[:100],
                    reason=str(value.get("reason") or "")[:1000],
                )
        position = answer.find("{", position + 1)
    raise LlmVerdictError(problem)


def _conversation_key(message: ArchivedMessage) -> str:
    if message.roomid:
        return f"room:{message.roomid}"
    return "pair:" + ",".join(sorted({message.sender, *message.tolist}))


def _transcript(messages: Sequence[ArchivedMessage]) -> str:
    lines = [f"[{m.msgtime:%Y-%m-%d %H:%M}] {m.sender}: {m.text}" for m in messages if m.text]
    text = "\n".join(lines)
    # Keep the end: the newest messages are the ones being reviewed.
    return text[-MAX_TRANSCRIPT_CHARS:]


def llm_review_prompt(*, policy: AuditPolicy, transcript: str) -> str:
    """The policy's prompt with the transcript in place of `{transcript}` (or appended)."""
    template = policy.llm_review_prompt.strip() or DEFAULT_PROMPT
    if TRANSCRIPT_PLACEHOLDER in template:
        return template.replace(TRANSCRIPT_PLACEHOLDER, transcript)
    return f"{template}\n\n{transcript}"


def _profile(policy: AuditPolicy) -> ModelProfile | None:
    """The policy's review model, else the first model profile."""
    if policy.llm_review_model is not None:
        return policy.llm_review_model
    return ModelProfile.objects.order_by("pk").first()


def _ask(profile: ModelProfile, prompt: str) -> str:
    engine = profile_engine(profile=profile)
    generation = engine.submit(
        ChatRequest(
            messages=({"role": "user", "content": prompt},),
            sampling=SamplingParams(temperature=0.0, max_tokens=MAX_ANSWER_TOKENS, seed=0),
            deadline=time.monotonic() + ANSWER_TIMEOUT_SECONDS,
        )
    )
    answer = "".join(generation)
    if generation.stats.finish_reason in ("error", "deadline", "cancelled"):
        raise EngineError(f"generation ended with {generation.stats.finish_reason}")
    return answer


@dataclass
class LlmReviewResult:
    conversations: int = 0
    verdicts: int = 0
    errors: int = 0
    cases: int = 0


def archive_messages_llm_review(*, source_id: int, message_ids: Iterable[int]) -> LlmReviewResult:
    """Review the conversations of these stored messages under each LLM-review policy."""
    result = LlmReviewResult()
    policies = list(
        AuditPolicy.objects.filter(enabled=True, llm_review_enabled=True, archive_sources=source_id)
        .select_related("llm_review_model")
        .order_by("pk")
    )
    messages = list(
        ArchivedMessage.objects.filter(
            source_id=source_id, pk__in=list(message_ids), purged_at__isnull=True
        )
        .exclude(text="")
        .order_by("msgtime", "seq")
    )
    if not policies or not messages:
        return result
    conversations: dict[str, list[ArchivedMessage]] = defaultdict(list)
    for message in messages:
        conversations[_conversation_key(message)].append(message)
    for chat in conversations.values():
        result.conversations += 1
        transcript = _transcript(chat)
        outcomes: dict[str, Any] = {}
        errors: list[str] = []
        cases: list[ReviewCase] = []
        for policy in policies:
            profile = _profile(policy)
            try:
                if profile is None:
                    raise EngineError("no model profile is configured")
                answer = _ask(profile, llm_review_prompt(policy=policy, transcript=transcript))
                verdict = llm_verdict_parse(answer)
            except (EngineError, LlmVerdictError) as exc:
                result.errors += 1
                errors.append(f"{policy.name}: {exc}")
                outcomes[str(policy.pk)] = {"error": str(exc)}
                continue
            result.verdicts += 1
            outcomes[str(policy.pk)] = verdict.as_record()
            if verdict.risk >= policy.llm_review_threshold:
                cases.append(
                    ReviewCase(
                        policy=policy,
                        action=Action.FLAG,
                        archived_message=chat[-1],
                        archive_source_id=source_id,
                        matches=[
                            {
                                "policy": policy.pk,
                                "rule": "llm",
                                "label": verdict.label or "LLM",
                                "action": Action.FLAG,
                                "start": 0,
                                "end": 0,
                                "word": None,
                                "risk": verdict.risk,
                                "reason": verdict.reason,
                                "messages": [m.pk for m in chat],
                            }
                        ],
                    )
                )
        with transaction.atomic():
            ArchivedMessage.objects.filter(pk__in=[m.pk for m in chat]).update(
                llm_review=outcomes,
                llm_review_error="\n".join(errors),
                llm_reviewed_at=timezone.now(),
            )
            created = ReviewCase.objects.bulk_create(cases)
            if created:
                transaction.on_commit(lambda created=created: review_cases_publish(created))
        result.cases += len(created)
        for error in errors:
            logger.warning("archive source %s: LLM review: %s", source_id, error)
    return result

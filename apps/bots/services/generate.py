"""Answering a turn in the worker: claim it, ground it in the knowledge bases, stream the model.

Runs in the Celery worker, never in a request. The turn's end (finish or fail) is left to
`deliver`; this stage only produces the text and keeps the stream and the lease alive.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, connection
from django.db.models import Q
from django.utils.translation import gettext as _

from apps.audit.models import AuditPolicy
from apps.audit.services.policy import PolicyStreamGuard, policy_evaluate, policy_stream_guard
from apps.audit.services.review import review_cases_open_for_turn
from apps.bots import selectors
from apps.bots.models import Conversation, Turn
from apps.bots.services.deliver import turn_fail, turn_finish
from apps.bots.services.files import (
    FileExcerpt,
    conversation_file_read,
    file_excerpts,
    prompt_with_files,
)
from apps.bots.services.queue_notice import QueueNotice
from apps.bots.services.stream import reply_language, stream_close_for_deadline
from apps.bots.services.variants import turn_variant_apply
from apps.bots.streams import StreamFlusher, deadline_from, now_epoch
from apps.directory.selectors import Readers, chat_readers
from apps.inference.engine.base import (
    ChatRequest,
    Engine,
    EngineError,
    FinishReason,
    Generation,
    GenerationStats,
    PromptTooLong,
)
from apps.inference.engine.think import ThinkSplitter
from apps.inference.model_load import profile_engine
from apps.inference.models import ModelProfile
from apps.knowledge.models import KnowledgeBase
from apps.knowledge.services.retrieval import (
    Hit,
    hits_relevance,
    knowledge_retrieve,
    prompt_with_passages,
    sources_footer,
)
from wecom.display import wecom_stream_content

logger = logging.getLogger(__name__)

# The database unreachable or restarting, as opposed to a query that is wrong.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)


def turn_claim(*, turn_id: int) -> Turn | None:
    """Take the turn for this worker, or None when it is finished or another worker is alive.

    The heartbeat lease lets a redelivered task (its worker process died) take over a
    turn, while a duplicate delivery never generates the same answer twice at once.
    """
    lease = timedelta(seconds=settings.TURN_LEASE_SECONDS)
    deadline = time.monotonic() + settings.TURN_LEASE_SECONDS + 5
    turn = (
        Turn.objects.select_related("bot__model_profile", "conversation").filter(pk=turn_id).first()
    )
    if turn is not None:
        turn_variant_apply(turn=turn)  # its A/B variant's model and prompt, if it has one
    seen_beat: datetime | None = None
    while turn is not None and not turn.is_terminal:
        if turn.claim(lease=lease):
            return turn
        if turn.status == Turn.Status.GENERATING:
            # A live holder's lease keeper renews the heartbeat every third of the lease:
            # a duplicate task (the sweeper's) leaves as soon as it sees a renewal, a
            # redelivery after its worker died waits for the lease to run out and takes over.
            if seen_beat is not None and turn.heartbeat_at != seen_beat:
                logger.info("turn %s is being answered by another worker", turn_id)
                return None
            seen_beat = turn.heartbeat_at
        if time.monotonic() > deadline:
            logger.info("turn %s is being answered by another worker", turn_id)
            return None
        time.sleep(0.5)
        turn.refresh_from_db(fields=["status", "attempts", "heartbeat_at"])
    return None


class _LeaseKeeper:
    """Renews a claimed turn's heartbeat from its own thread for the whole life of the claim.

    Renewing only when tokens arrive let a turn waiting for an engine slot (or reading its
    knowledge bases) look dead, and the sweeper took it from a live worker. A database blip
    skips one renewal; `lost` is set once the turn ended or another attempt took it.
    """

    def __init__(self, turn: Turn, *, interval: float) -> None:
        # An instance of its own: the thread never writes the worker's instance.
        self._turn = Turn(pk=turn.pk, attempts=turn.attempts, status=turn.status)
        self._interval = interval
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{turn.pk}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                try:
                    if not self._turn.heartbeat():
                        self.lost.set()
                        return
                except DatabaseError:
                    logger.warning("turn %s: heartbeat failed", self._turn.pk, exc_info=True)
                    connection.close()
        finally:
            connection.close()  # this thread's own connection


@dataclass
class _Answering:
    """One attempt at a turn: what the decode loop gathers for the turn's end."""

    turn: Turn
    policies: list[AuditPolicy]
    knowledge_bases: list[KnowledgeBase]
    flusher: StreamFlusher
    deadline: float
    keeper: _LeaseKeeper | None = None
    guard: PolicyStreamGuard | None = None
    splitter: ThinkSplitter = field(default_factory=ThinkSplitter)
    raw: list[str] = field(default_factory=list)
    hits: list[Hit] | None = None
    files: list[FileExcerpt] = field(default_factory=list)  # from files sent in this chat
    fixed_reply: str = ""  # set when the model is not asked (or cannot be): see fixed_reason
    fixed_reason: str = ""  # a Turn.FixedReplyReason
    stats: GenerationStats | None = None
    last_flush: float = 0.0
    first_token: bool = False
    lost: bool = False  # the sweeper or another worker took the turn meanwhile


def turn_generate(*, turn_id: int) -> None:
    """Stream the model's answer into Redis, then finish the stream (or use response_url)."""
    turn = turn_claim(turn_id=turn_id)
    if turn is None:
        return
    if turn.attempts > settings.TURN_MAX_ATTEMPTS:
        turn_fail(turn=turn, error=f"gave up after {turn.attempts - 1} attempts")
        return
    keeper = _LeaseKeeper(turn, interval=max(0.2, settings.TURN_LEASE_SECONDS / 3))
    try:
        if turn.msgtype == "file":  # a file to read, not a question for the model
            conversation_file_read(turn=turn)
            return
        _turn_answer(turn, keeper=keeper)
    finally:
        keeper.stop()


def _turn_answer(turn: Turn, *, keeper: _LeaseKeeper) -> None:
    policies = selectors.bot_policies(bot=turn.bot)
    deadline = deadline_from(turn.received_at.timestamp())
    answering = _Answering(
        turn=turn,
        policies=policies,
        # Fetched once per turn: retrieval, grounding and sources all use this list.
        knowledge_bases=list(turn.bot.knowledge_bases.select_related("embedding_profile")),
        guard=policy_stream_guard(policies=policies) if policies else None,
        deadline=deadline,
        flusher=StreamFlusher(
            turn_id=turn.pk,
            stream_id=turn.stream_id,
            deadline=deadline,
            interval=settings.WECOM_STREAM_FLUSH_SECONDS,
        ),
        keeper=keeper,
    )
    try:
        _answer_generate(answering)
    except EngineError as exc:
        error = str(exc)
    except TRANSIENT_DB_ERRORS:
        # The database went away before the answer existed: the task retries (bounded by
        # the turn's deadline) and the sweeper re-queues the turn once the lease runs out.
        raise
    except Exception as exc:
        logger.exception("turn %s failed while generating", turn.pk)
        error = f"{type(exc).__name__}: {exc}"
    else:
        error = ""
    finally:
        answering.flusher.close_stream()
        answering.flusher.stop()
    if error:
        _end_retrying(lambda: turn_fail(turn=turn, error=error), until=deadline)
        return
    _answer_conclude(answering)


def _end_retrying(end: Callable[[], bool], *, until: float) -> bool:
    """Give the turn its end, retrying through a database blip while the window is open.

    Each end is conditional on the turn's state and attempt, and the response_url is
    taken once, so a retry after a half-done try delivers nothing twice.
    """
    pause = 0.5
    while True:
        try:
            return end()
        except TRANSIENT_DB_ERRORS:
            if now_epoch() + pause > until:
                raise
            logger.warning("turn end failed on the database; retrying", exc_info=True)
            connection.close()
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _answer_generate(answering: _Answering) -> None:
    turn, guard = answering.turn, answering.guard
    messages = selectors.conversation_messages(turn=turn, mask=_masker(answering.policies))
    question = messages[-1]["content"]
    answering.hits = _knowledge_hits(
        turn=turn, question=question, knowledge_bases=answering.knowledge_bases
    )
    if answering.hits is not None and _sources_do_not_answer(
        turn=turn, question=question, hits=answering.hits, knowledge_bases=answering.knowledge_bases
    ):
        # Before the engine is even loaded: the model is never asked.
        with reply_language():
            answering.fixed_reply = turn.bot.no_answer_reply.strip() or _(
                "Sorry, I found nothing about this in the documents I may use. Please ask "
                "the department responsible."
            )
        answering.fixed_reason = Turn.FixedReplyReason.NO_RELEVANT_SOURCE
        return
    engine = profile_engine(profile=turn.bot.model_profile)
    answering.files = file_excerpts(
        turn=turn, question=question, budget_chars=settings.WECOM_FILE_CONTEXT_CHARS
    )
    generation = _submit_fitting(answering, engine=engine, messages=messages)
    if generation is None:
        return
    with QueueNotice(
        generation=generation,
        engine=engine,
        threshold=turn.bot.queue_notice_seconds,
        flusher=answering.flusher,
    ) as notice:
        for piece in generation:
            notice.stop()
            answering.raw.append(piece)
            if guard is not None:
                # Only text no block/mask rule can still match reaches WeCom: a blocked
                # word is never streamed out and then retracted.
                piece = guard.feed(piece)
                if guard.blocked:
                    generation.cancel()
                    break
            answering.splitter.feed(piece)
            if not _answer_progress(answering):
                answering.lost = True
                generation.cancel()
                break
    if guard is not None and not guard.blocked:
        answering.splitter.feed(guard.finish())
    answering.splitter.finish()
    answering.stats = generation.stats


def _submit_fitting(
    answering: _Answering, *, engine: Engine, messages: tuple[dict[str, str], ...]
) -> Generation | None:
    """Submit the prompt, shedding what matters least until it fits; None = too long.

    The engine drops the oldest history itself; passages go next (the weakest half at a
    time), then excerpts of files sent in the chat; a question that still does not fit
    alone gets a reply asking to shorten it, not the apology for a failure.
    """
    turn = answering.turn
    while True:
        question = prompt_with_files(question=messages[-1]["content"], excerpts=answering.files)
        if answering.hits is not None:
            asked = ({"role": "user", "content": question},)
            question = _grounded(
                turn, asked, answering.hits, knowledge_bases=answering.knowledge_bases
            )
        prompt = (*messages[:-1], {"role": "user", "content": question})
        request = ChatRequest(
            messages=prompt,
            sampling=turn.bot.sampling(),
            deadline=time.monotonic() + settings.TURN_GENERATION_TIMEOUT_SECONDS,
        )
        try:
            return engine.submit(request)
        except PromptTooLong as exc:
            if answering.hits or answering.files:
                shed = answering.hits or answering.files
                del shed[len(shed) // 2 :]
                continue
            logger.info("turn %s: question too long for the context (%s)", turn.pk, exc)
        with reply_language():
            answering.fixed_reply = _(
                "Sorry, your question is too long for me to read in one go. Please shorten "
                "it (or split it into several questions) and ask again."
            )
        answering.fixed_reason = Turn.FixedReplyReason.QUESTION_TOO_LONG
        return None


def _answer_conclude(answering: _Answering) -> None:
    """The turn's end from what was generated: refused, failed, or answered with sources."""
    turn, guard, stats = answering.turn, answering.guard, answering.stats
    if answering.fixed_reply:
        turn.fixed_reply_reason = answering.fixed_reason
        fixed_reply = answering.fixed_reply
        _end_retrying(
            lambda: turn_finish(turn=turn, reasoning="", answer=fixed_reply),
            until=answering.deadline,
        )
        return
    assert stats is not None
    if answering.lost:
        logger.info("turn %s was taken from this worker; its partial answer is dropped", turn.pk)
        return
    turn.prompt_tokens = stats.prompt_tokens
    turn.completion_tokens = stats.completion_tokens
    if guard is not None:
        _guard_record(turn=turn, guard=guard, policies=answering.policies)
        if guard.blocked:
            turn.withheld_answer = "".join(answering.raw)
            _end_retrying(
                lambda: turn_finish(turn=turn, reasoning="", answer=guard.refusal_message),
                until=answering.deadline,
            )
            return
    if stats.finish_reason in {"error", "cancelled"}:
        _end_retrying(
            lambda: turn_fail(turn=turn, error=f"generation ended: {stats.finish_reason}"),
            until=answering.deadline,
        )
        return
    turn.finish_reason = str(stats.finish_reason or "")
    answer = answering.splitter.answer
    note = _truncation_note(stats.finish_reason)
    if note:
        answer = f"{answer.rstrip()}\n\n{note}"
    if answering.hits:
        turn.sources = [_source_record(hit) for hit in answering.hits]
        with reply_language():
            answer = f"{answer.rstrip()}\n\n{sources_footer(hits=answering.hits)}"
    _end_retrying(
        lambda: turn_finish(turn=turn, reasoning=answering.splitter.reasoning, answer=answer),
        until=answering.deadline,
    )


def _truncation_note(reason: str | None) -> str:
    """An answer the model did not end itself says so: a cut answer must not look complete."""
    with reply_language():
        if reason == FinishReason.LENGTH:
            return _("(The answer was cut off here: it reached the maximum answer length.)")
        if reason == FinishReason.DEADLINE:
            return _("(The answer was cut off here: it reached the time limit for one answer.)")
    return ""


def _guard_record(*, turn: Turn, guard: PolicyStreamGuard, policies: list[AuditPolicy]) -> None:
    """The answer's policy decision goes on the turn and, when flagged, to review."""
    if guard.decision is None:
        guard.finish()  # blocked mid-stream: evaluate the whole text for the record
    decision = guard.decision
    assert decision is not None
    if decision.matches:
        turn.filter_decisions = [
            *turn.filter_decisions,
            {"subject": "answer", **decision.as_record()},
        ]
    if decision.needs_review:
        review_cases_open_for_turn(turn=turn, decision=decision, policies=policies)


def _answer_progress(answering: _Answering) -> bool:
    """Stamp the first token, renew the lease, flush the stream; False once the turn is lost."""
    turn, now = answering.turn, time.monotonic()
    if not answering.first_token:
        answering.first_token = True
        try:
            turn.first_token()
        except DatabaseError:  # only a statistic: a database blip must not cost the answer
            logger.warning("turn %s: first token not stamped", turn.pk, exc_info=True)
            connection.close()
    if answering.keeper is not None and answering.keeper.lost.is_set():
        return False
    if now - answering.last_flush < settings.WECOM_STREAM_FLUSH_SECONDS / 2:
        return True
    answering.last_flush = now
    splitter = answering.splitter
    content = wecom_stream_content(
        splitter.reasoning, splitter.answer, thinking_done=not splitter.in_think
    )
    if turn.stream_closed_at is None and now_epoch() > answering.deadline:
        answering.flusher.close_stream()
        try:
            stream_close_for_deadline(turn=turn, content=content, deadline=answering.deadline)
        except DatabaseError:
            # A connection cut by a database restart fails here first: raised out of the
            # decode loop it cost the whole answer. The next flush tries the close again.
            logger.warning("turn %s: stream not closed at its deadline", turn.pk, exc_info=True)
            connection.close()
    answering.flusher.update(content)
    return True


def _knowledge_hits(
    *, turn: Turn, question: str, knowledge_bases: Sequence[KnowledgeBase] | None = None
) -> list[Hit] | None:
    """Passages all readers of the answer may read, or None when the bot has no knowledge base.

    The permission filter runs inside the search query, so a restricted passage never
    reaches the prompt of someone not allowed to read it.
    """
    if knowledge_bases is None:
        knowledge_bases = list(turn.bot.knowledge_bases.select_related("embedding_profile"))
    if not knowledge_bases:
        return None
    conversation = turn.conversation
    return knowledge_retrieve(
        bot_kb_ids=[kb.pk for kb in knowledge_bases],
        knowledge_bases=knowledge_bases,
        # In a group every member reads the answer: passages must be open to all of them.
        readers=Readers.outsider()
        if conversation.external
        else chat_readers(
            userid=conversation.userid,
            chat_id=conversation.chat_id,
            group=conversation.chat_type == Conversation.ChatType.GROUP,
        ),
        query=question,
        top_k=turn.bot.retrieval_top_k,
    )


def _sources_do_not_answer(
    *, turn: Turn, question: str, hits: list[Hit], knowledge_bases: Sequence[KnowledgeBase]
) -> bool:
    """Whether the turn gets the fixed reply: only-from-sources everywhere, nothing relevant.

    A knowledge base's own setting wins over the bot's (empty = the bot's); one knowledge
    base that lets the model answer freely is enough to ask the model. Passages the
    readers may not read never reach `hits`, so a user outside every audience gets the
    fixed reply too.
    """
    bot_only = turn.bot.answer_only_from_sources
    if not all(
        bot_only if kb.answer_only_from_sources is None else kb.answer_only_from_sources
        for kb in knowledge_bases
    ):
        return False
    if hits and all(hit.similarity is None for hit in hits):
        # The vectors were unavailable (the embedding model failed to load, logged by the
        # search): relevance cannot be judged, so the prompt's own rule has to do.
        return False
    relevance = hits_relevance(query=question, hits=hits)
    if relevance >= settings.KNOWLEDGE_RELEVANCE_THRESHOLD:
        return False
    logger.info("turn %s: best passage relevance %.3f, fixed reply", turn.pk, relevance)
    return True


def _grounded(
    turn: Turn,
    messages: tuple[dict[str, str], ...],
    hits: list[Hit],
    *,
    knowledge_bases: Sequence[KnowledgeBase],
) -> str:
    only_sources = turn.bot.answer_only_from_sources or any(
        kb.answer_only_from_sources for kb in knowledge_bases
    )
    with reply_language():
        return prompt_with_passages(
            question=messages[-1]["content"], hits=hits, answer_only_from_sources=only_sources
        )


def _source_record(hit: Hit) -> dict[str, Any]:
    return {
        "chunk": hit.chunk_id,
        "document": hit.document_id,
        "document_version": hit.document_version,
        "file": hit.document,
        "title": hit.title,
        "heading": hit.heading,
        "knowledge_base": hit.knowledge_base,
        "score": hit.score,
    }


def _masker(policies: list[AuditPolicy]) -> Callable[[str], str] | None:
    """What the model sees of questions stored without a masked form (asked before a policy)."""
    if not policies:
        return None
    return lambda text: policy_evaluate(policies=policies, text=text).masked_text


def engines_warm(*, profile_ids: frozenset[int] | None = None) -> int:
    """Load the models of enabled bots, so the first question after a restart is not slow;
    a worker started with `--profiles` loads only its own (`profile_ids`)."""
    loaded = 0
    # A variant's model answers some of its bot's users: warmed like the bot's own.
    in_use = Q(bots__enabled=True) | Q(bot_variants__enabled=True, bot_variants__bot__enabled=True)
    profiles = ModelProfile.objects.filter(in_use).distinct()
    if profile_ids is not None:
        profiles = profiles.filter(pk__in=profile_ids)
    for profile in profiles:
        try:
            profile_engine(profile=profile)
            loaded += 1
        except EngineError as exc:
            logger.error("model profile %s cannot be loaded: %s", profile.name, exc)
    return loaded

"""The end of a turn: the final stream state, response_url for what does not fit, the ledger.

Every turn gets exactly one end. The status change is the model's conditional UPDATE
(`Turn.finish` / `Turn.fail`), written in the same transaction as its ledger entry, so a
worker that lost its turn to the sweeper (or to another worker) records nothing.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext as _
from redis.exceptions import RedisError

from apps.audit.services.ledger import ledger_record_turn
from apps.bots.models import Turn
from apps.bots.services.stream import reply_language, with_note
from apps.bots.streams import StreamState, deadline_from, stream_publish, stream_state_set
from wecom.display import wecom_stream_content
from wecom.messages import MAX_CONTENT_BYTES, split_at_boundary
from wecom.outbound import ResponseUrlError, ResponseUrlPolicy, post_response_url

logger = logging.getLogger(__name__)

# What a Redis outage raises through Django's cache (the client library's errors).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)

# Bytes kept free at the end of a stream for the "continued below" note.
NOTE_RESERVE = 256


def response_url_policy() -> ResponseUrlPolicy:
    """Where a response_url may point: WeCom's host over https (the loopback simulator in tests)."""
    return ResponseUrlPolicy.of(
        settings.WECOM_RESPONSE_URL_HOSTS,
        allow_http_loopback=settings.WECOM_RESPONSE_URL_ALLOW_HTTP_LOOPBACK,
    )


def turn_finish(*, turn: Turn, reasoning: str, answer: str) -> bool:
    """Deliver the final answer: the stream when it fits and is open, response_url for the rest.

    False when the turn had already ended (the sweeper failed it meanwhile): nothing is
    delivered or recorded then.
    """
    reasoning, answer = reasoning.strip(), answer.strip()
    if not answer:
        with reply_language():
            answer = _("Sorry, I could not come up with an answer. Please rephrase your question.")
    if not turn.is_held():
        logger.warning("turn %s ended before its answer was ready; answer dropped", turn.pk)
        return False
    content, rest = _stream_final(turn=turn, reasoning=reasoning, answer=answer)
    deadline = deadline_from(turn.received_at.timestamp())
    closed = _stream_close_with(turn, StreamState(content=content, finish=True, deadline=deadline))
    if closed is False:
        rest = answer
    error = ""
    if rest and turn.longconn_req_id:
        turn.longconn_rest = rest  # the connector pushes it once the stream has ended
    elif rest and turn.channel == Turn.Channel.CALLBACK:
        # Other doors carry the whole answer themselves (a push, a passive reply, SSE).
        error = _response_url_deliver(turn=turn, content=rest)
    with transaction.atomic():
        finished = turn.finish(answer=answer, reasoning=reasoning, error=error)
        if finished:
            turn_ledger(turn)
    if not finished:
        logger.warning("turn %s ended while its answer was delivered; not recorded", turn.pk)
        return False
    stream_publish(turn.pk, content=answer, finish=True, status=Turn.Status.ANSWERED)
    return True


def _stream_final(*, turn: Turn, reasoning: str, answer: str) -> tuple[str, str]:
    """The stream's last content, and the part of the answer that does not fit in it."""
    shown_reasoning = reasoning
    if len(reasoning.encode()) > MAX_CONTENT_BYTES // 2:
        # Reasoning is stored in full; the bubble shows its beginning only.
        shown_reasoning, _cut = split_at_boundary(reasoning, MAX_CONTENT_BYTES // 2)
        shown_reasoning += "…"
    think_block = wecom_stream_content(shown_reasoning, "", thinking_done=True)
    budget = MAX_CONTENT_BYTES - len(think_block.encode()) - NOTE_RESERVE
    head, rest = split_at_boundary(answer, budget)
    content = wecom_stream_content(shown_reasoning, head.rstrip(), thinking_done=True)
    if rest:
        with reply_language():
            content = f"{content}\n\n" + _("(continued in the next message)")
    return content, rest


def _stream_close_with(turn: Turn, state: StreamState) -> bool | None:
    """Win the stream's close and write its last state, or neither: None when Redis failed.

    The close is only committed once Redis took the state, so a Redis outage at the end
    never leaves a stream marked finished whose bubble nobody finished; the refresh then
    serves the ended turn from the database instead. False: someone else closed it.
    """
    try:
        with transaction.atomic():
            if not turn.close_stream():
                return False
            stream_state_set(turn.stream_id, state)
    except REDIS_ERRORS:
        turn.stream_closed_at = None
        logger.warning("turn %s: final stream write failed", turn.pk, exc_info=True)
        return None
    return True


def _response_url_deliver(*, turn: Turn, content: str) -> str:
    """POST once to response_url; returns an error description for admins, '' on success."""
    url, problem = turn.response_url_take()
    if problem:
        return problem
    head, rest = split_at_boundary(content, MAX_CONTENT_BYTES - NOTE_RESERVE)
    error = ""
    if rest:
        with reply_language():
            head = f"{head}\n\n" + _("(The answer was cut here: it exceeds WeCom's message size.)")
        error = f"{len(rest.encode())} bytes beyond two WeCom messages were not delivered"
    try:
        post_response_url(
            url,
            {"msgtype": "markdown", "markdown": {"content": head}},
            policy=response_url_policy(),
        )
    except ResponseUrlError as exc:
        logger.warning("turn %s: response_url delivery failed: %s", turn.pk, exc)
        return f"{Turn.RESPONSE_URL_FAILED}: {exc}"
    return error


def turn_fail(*, turn: Turn, error: str, shown: str = "") -> bool:
    """End the turn as failed: the user sees a short apology, admins see the error.

    False when the turn had already ended or another worker holds it: no apology then.
    """
    if not turn.is_held():
        logger.info("turn %s is no longer this caller's to fail: %s", turn.pk, error)
        return False
    with reply_language():
        apology = _("Sorry, something went wrong while answering. Please try again later.")
    deadline = deadline_from(turn.received_at.timestamp())
    # What the bubble already showed stays, with the apology under it.
    content = with_note(shown, apology) if shown.strip() else apology
    closed = _stream_close_with(turn, StreamState(content=content, finish=True, deadline=deadline))
    if closed is False:
        _response_url_deliver(turn=turn, content=apology)
    with transaction.atomic():
        failed = turn.fail(error=error)
        if failed:
            turn_ledger(turn)
    if not failed:
        return False
    stream_publish(turn.pk, content=apology, finish=True, status=Turn.Status.FAILED)
    logger.warning("turn %s failed: %s", turn.pk, error)
    return True


def turns_sweep() -> int:
    """Enqueue again what was lost, fail what cannot make WeCom's window; see `recover`."""
    from apps.bots.services.recover import turns_recover

    return turns_recover()


def turn_ledger(turn: Turn) -> None:
    """Append the ended turn to the hash-chained ledger (same transaction as its status)."""
    ledger_record_turn(
        turn=turn,
        decisions=turn.filter_decisions,
        delivery={
            "stream_closed_at": turn.stream_closed_at.isoformat()
            if turn.stream_closed_at
            else None,
            "response_url_used_at": turn.response_url_used_at.isoformat()
            if turn.response_url_used_at
            else None,
            "error": turn.error[:500],
        },
    )

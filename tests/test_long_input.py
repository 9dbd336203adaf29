"""A question longer than the model's context: history goes first, then a specific reply.

Runs the worker's `turn_generate` in this process with the real bundled model (2,048-token
context in the test profile); the 8 KB Chinese question is the size that used to end in
the generic apology.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.translation import gettext, override

from apps.bots.models import Conversation, Turn
from apps.bots.services import generate
from apps.bots.streams import StreamState, stream_state_get, stream_state_set
from apps.inference.engine import ChatRequest, PromptTooLong
from apps.inference.model_load import profile_engine

# Transactional: the worker's lease keeper renews the claim from its own thread and connection.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

TOO_LONG = (
    "Sorry, your question is too long for me to read in one go. Please shorten it (or split "
    "it into several questions) and ask again."
)
# About 8 KB of UTF-8: a pasted contract clause, not something a chat model of 2,048 tokens reads.
EIGHT_KB_QUESTION = ("请帮我检查这份劳动合同条款是否符合法律规定，并说明理由。" * 100)[:2730]


def _turn(bot, question: str, *, msgid: str, ago: float = 0.0, **fields) -> Turn:
    conversation, _ = Conversation.objects.get_or_create(
        bot=bot, chat_type=Conversation.ChatType.SINGLE, chat_id="", userid="zhangsan"
    )
    return Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=msgid,
        stream_id=f"s-{msgid}",
        question=question,
        received_at=timezone.now() - timedelta(seconds=ago),
        **fields,
    )


def _answer(turn: Turn) -> Turn:
    stream_state_set(turn.stream_id, StreamState(deadline=timezone.now().timestamp() + 300))
    generate.turn_generate(turn_id=turn.pk)
    return Turn.objects.get(pk=turn.pk)


def test_an_8kb_chinese_question_is_asked_to_be_shortened_not_apologised_for(bot):
    assert len(EIGHT_KB_QUESTION.encode("utf-8")) >= 8000

    turn = _answer(_turn(bot, EIGHT_KB_QUESTION, msgid="long-1"))

    assert turn.status == Turn.Status.ANSWERED, (turn.status, turn.error)
    assert turn.fixed_reply_reason == Turn.FixedReplyReason.QUESTION_TOO_LONG
    assert turn.error == ""
    with override("zh-hans"):
        expected = gettext(TOO_LONG)
    assert expected != TOO_LONG  # the reply is in the deployment's language (zh_Hans)
    assert turn.answer == expected
    state = stream_state_get(turn.stream_id)
    assert state is not None and state.finish is True and state.content == expected


def test_history_is_dropped_before_the_question_is_refused(bot):
    # Three earlier answered turns of about 750 tokens each: with them the prompt cannot fit
    # the 2,048-token context, without them the short new question does.
    bot.context_turns = 3
    bot.save()
    filler = "Please remember this long note about our travel policy and expenses. " * 62
    for index in range(3):
        _turn(
            bot,
            f"{index}: {filler}",
            msgid=f"old-{index}",
            ago=60 - index,
            status=Turn.Status.ANSWERED,
            answer="Noted.",
            finished_at=timezone.now(),
        )
    engine = profile_engine(profile=bot.model_profile)
    assert 3 * engine.count_tokens(filler) > engine.n_ctx  # type: ignore[attr-defined]

    turn = _answer(_turn(bot, "What is annual leave?", msgid="short-1"))

    assert turn.status == Turn.Status.ANSWERED, (turn.status, turn.error)
    assert turn.fixed_reply_reason == ""
    assert turn.completion_tokens > 0
    assert 0 < turn.prompt_tokens <= engine.n_ctx - bot.max_tokens  # type: ignore[attr-defined]


def test_the_engine_names_a_question_that_cannot_fit_alone(bot):
    engine = profile_engine(profile=bot.model_profile)

    request = ChatRequest(
        messages=({"role": "user", "content": EIGHT_KB_QUESTION},), sampling=bot.sampling()
    )
    with pytest.raises(PromptTooLong) as caught:
        engine.submit(request)
    assert caught.value.prompt_tokens > caught.value.budget


def test_file_excerpts_are_shed_before_the_question_is_refused(bot, settings):
    # A file's excerpts alone overflow the context: they are halved until the prompt fits,
    # and the short question is answered by the model.
    from apps.bots.conversation_files import ConversationFile

    settings.WECOM_FILE_CONTEXT_CHARS = 20_000
    paragraph = "Travel expenses must be filed within thirty days with all receipts attached. "
    text = "\n\n".join(f"{i}. {paragraph * 4}" for i in range(40))
    carrier = _turn(bot, "📎 policy.txt", msgid="file-1", ago=30, status=Turn.Status.ANSWERED)
    ConversationFile.objects.create(
        conversation=carrier.conversation,
        turn=carrier,
        filename="policy.txt",
        status=ConversationFile.Status.READ,
        text=text,
    )
    engine = profile_engine(profile=bot.model_profile)
    assert engine.count_tokens(text) > engine.n_ctx  # type: ignore[attr-defined]

    turn = _answer(_turn(bot, "When must travel expenses be filed?", msgid="q-1"))

    assert turn.status == Turn.Status.ANSWERED, (turn.status, turn.error)
    assert turn.fixed_reply_reason == ""
    assert turn.completion_tokens > 0
    # Some of the file still made it into the prompt: far more than the question alone.
    assert turn.prompt_tokens > 300

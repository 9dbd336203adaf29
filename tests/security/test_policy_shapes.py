"""Issue 9, item 10: every shape of audit policy lets answers through (or stops them) as set.

A policy with no block or mask word (regex only, personal data only, flag only, or
nothing at all) used to give the stream guard an empty word matcher, which raised
IndexError on the first token, so every answer of the bot failed. Each shape here runs a
whole answer: simulator → callback → turn → the real model → stream → refresh.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from apps.audit.models import Action, AuditPolicy, PolicyWordList, RegexRule, ReviewCase
from apps.audit.models import SensitiveWordList as WordList
from apps.bots.models import Turn
from apps.bots.services import generate

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "Write one friendly sentence welcoming a new employee to the company."
REFUSAL = "该内容无法回答。"
_baseline: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _engines_closed() -> Iterator[None]:
    yield
    from apps.inference.engine.registry import close_all

    close_all()


def _answer(bot, sim, userid: str) -> tuple[Turn, dict]:
    """Ask once, generate in this process (the worker's code path), read the final stream."""
    ack = sim.decrypt_reply(sim.post_message(sim.text_message(QUESTION, userid=userid)))
    turn = Turn.objects.get(bot=bot, conversation__userid=userid)
    generate.turn_generate(turn_id=turn.pk)
    turn.refresh_from_db()
    refresh = sim.stream_refresh_message(ack["stream"]["id"], userid=userid)
    return turn, sim.decrypt_reply(sim.post_message(refresh))["stream"]


def _baseline_answer(bot, sim) -> str:
    """The answer with no policy (greedy decoding: the same for the same question)."""
    if "answer" not in _baseline:
        turn, _stream = _answer(bot, sim, "baseline")
        assert turn.status == Turn.Status.ANSWERED, turn.error
        _baseline["answer"] = turn.answer
    return _baseline["answer"]


def _word_of(answer: str) -> str:
    # A word of the question would block the question itself, before any answer.
    words = [w for w in re.findall(r"[A-Za-z]{5,}", answer) if w.lower() not in QUESTION.lower()]
    assert len(words) >= 3, answer
    return words[len(words) // 2]


def _policy(bot, shape: str, action: str, word: str) -> AuditPolicy:
    policy = AuditPolicy.objects.create(name=f"{shape}-{action}", refusal_message=REFUSAL)
    if shape == "words":
        word_list = WordList.objects.create(name=f"w-{action}", words=word)
        PolicyWordList.objects.create(policy=policy, word_list=word_list, action=action)
    elif shape == "regex":
        RegexRule.objects.create(policy=policy, pattern=re.escape(word), action=action)
    elif shape.startswith("pii_"):
        setattr(policy, shape, action)
        policy.save()
    policy.bots.add(bot)
    return policy


SHAPES = [
    ("empty", Action.ALLOW),
    *[("words", action) for action in (Action.ALLOW, Action.FLAG, Action.MASK, Action.BLOCK)],
    *[("regex", action) for action in (Action.ALLOW, Action.FLAG, Action.MASK, Action.BLOCK)],
    *[
        (detector, action)
        for detector in ("pii_resident_id", "pii_mobile", "pii_bank_card", "pii_email")
        for action in (Action.FLAG, Action.BLOCK)
    ],
]


@pytest.mark.parametrize(("shape", "action"), SHAPES)
def test_every_policy_shape_gives_a_whole_answer(make_bot, simulator_for, shape, action):
    bot = make_bot(context_turns=0, max_tokens=60)
    sim = simulator_for(bot)
    baseline = _baseline_answer(bot, sim)
    word = _word_of(baseline)
    _policy(bot, shape, action, word)

    turn, stream = _answer(bot, sim, f"u-{shape}-{action}")

    assert turn.status == Turn.Status.ANSWERED, turn.error
    assert stream["finish"] is True
    assert stream["content"] == turn.answer
    hits_the_word = shape in {"words", "regex"}
    if hits_the_word and action == Action.BLOCK:
        assert turn.answer == REFUSAL
        assert word in turn.withheld_answer
    elif hits_the_word and action == Action.MASK:
        assert not re.search(rf"\b{word}\b", turn.answer, re.IGNORECASE), turn.answer
        assert "*" * len(word) in turn.answer
    else:  # allow, flag, an empty policy, and detectors with nothing to detect
        assert turn.answer == baseline
    flagged = hits_the_word and action in {Action.FLAG, Action.BLOCK}
    assert ReviewCase.objects.filter(turn=turn).exists() == flagged

"""ThinkSplitter must give the same split however the stream is cut, and never show half a tag."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from apps.inference.engine.think import ThinkSplitter
from wecom.display import wecom_stream_content

# (text, reasoning, answer) after finish(); kept short so every split can be tried.
REFERENCES = [
    (
        "<think>\nLet me think.\n</think>\n\nThe answer is 42.",
        "Let me think.",
        "The answer is 42.",
    ),
    (" \n <think>abc</think>def", "abc", "def"),
    ("Okay, the user wants X.\n</think>\n\nHello!", "Okay, the user wants X.", "Hello!"),
    ("Plain answer with no tags.", "", "Plain answer with no tags."),
    ("A <think> tag later is just text.", "", "A <think> tag later is just text."),
    ("<think>a</think>b</think>c<think>d", "a", "b</think>c<think>d"),
    ("<thinking>is not a tag", "", "<thinking>is not a tag"),
    ("<think>嗯，用户问的是数字。</think>答案是四十二。", "嗯，用户问的是数字。", "答案是四十二。"),
    ("<think></think>Answer", "", "Answer"),
    ("<think>unfinished <", "unfinished <", ""),
    ("answer ending in </thi", "", "answer ending in </thi"),
    ("<thi", "", "<thi"),
    ("  ", "", ""),
]


def state(splitter: ThinkSplitter) -> tuple[str, str, bool]:
    return splitter.reasoning, splitter.answer, splitter.in_think


def parse(pieces: list[str], *, finish: bool, **options: bool) -> tuple[str, str, bool]:
    splitter = ThinkSplitter(**options)
    for piece in pieces:
        splitter.feed(piece)
    if finish:
        splitter.finish()
    return state(splitter)


def random_pieces(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(1, 8)))
    return [text[a:b] for a, b in pairwise([0, *cuts, len(text)])]


@pytest.mark.parametrize(("text", "reasoning", "answer"), REFERENCES)
def test_unsplit_parse_gives_expected_parts(text: str, reasoning: str, answer: str) -> None:
    # Given a whole model output, when parsed in one piece
    result = parse([text], finish=True)

    # Then reasoning and answer are separated and the tags are gone
    assert result[:2] == (reasoning, answer)
    assert result[2] is (text == "<think>unfinished <")


@pytest.mark.parametrize("text", [text for text, _, _ in REFERENCES])
@pytest.mark.parametrize("finish", [False, True])
def test_split_at_every_position_matches_unsplit(text: str, finish: bool) -> None:
    # Given the unsplit parse (also before finish(), while fragments are held back)
    expected = parse([text], finish=finish)

    # When the same text arrives in two pieces cut at every position
    # Then the result never depends on the cut
    for cut in range(len(text) + 1):
        assert parse([text[:cut], text[cut:]], finish=finish) == expected, cut


@pytest.mark.parametrize("text", [text for text, _, _ in REFERENCES])
def test_random_multi_splits_match_unsplit_at_every_prefix(text: str) -> None:
    rng = random.Random(text)
    for end in range(len(text) + 1):
        prefix = text[:end]
        expected = parse([prefix], finish=False)
        for _ in range(20):
            assert parse(random_pieces(prefix, rng), finish=False) == expected, prefix
    for _ in range(200):
        assert parse(random_pieces(text, rng), finish=True) == parse([text], finish=True)


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [ref for ref in REFERENCES if ref[0].lstrip().startswith("<think>")],
)
def test_streamed_parts_only_grow_and_never_show_a_partial_tag(
    text: str, reasoning: str, answer: str
) -> None:
    # Given an output with an explicit think block, fed one character at a time
    splitter = ThinkSplitter()
    for char in text:
        splitter.feed(char)

        # Then each intermediate state is a prefix of the final one: a half-received
        # "</think>" never shows up in the reasoning, nor anything in the answer early
        assert reasoning.startswith(splitter.reasoning.rstrip()), splitter.reasoning
        assert answer.startswith(splitter.answer), splitter.answer


def test_partial_close_tag_is_held_back_until_resolved() -> None:
    splitter = ThinkSplitter()
    splitter.feed("<think>step one</th")
    assert (splitter.reasoning, splitter.in_think) == ("step one", True)

    splitter.feed("ink>Done")
    assert state(splitter) == ("step one", "Done", False)


def test_opening_tag_prefix_is_not_shown_as_answer() -> None:
    splitter = ThinkSplitter()
    splitter.feed("\n<thi")
    assert state(splitter) == ("", "", False)

    splitter.feed("nk>why")
    assert state(splitter) == ("why", "", True)


def test_lone_close_tag_moves_earlier_text_to_reasoning() -> None:
    # Given an R1-style output that starts inside the reasoning without "<think>"
    splitter = ThinkSplitter()
    splitter.feed("The user asks about ")
    assert state(splitter) == ("", "The user asks about ", False)

    # When the closing tag arrives
    splitter.feed("tea.</think>Green tea.")

    # Then what looked like answer was reasoning
    assert state(splitter) == ("The user asks about tea.", "Green tea.", False)


def test_starts_in_think_treats_untagged_output_as_reasoning() -> None:
    splitter = ThinkSplitter(starts_in_think=True)
    assert splitter.in_think
    splitter.feed("Hmm, let me see")
    assert state(splitter) == ("Hmm, let me see", "", True)
    splitter.feed("</think>Yes.")
    assert state(splitter) == ("Hmm, let me see", "Yes.", False)


def test_starts_in_think_accepts_a_repeated_opening_tag() -> None:
    assert parse(["<think>a</think>b"], finish=True, starts_in_think=True) == ("a", "b", False)


def test_reasoning_cut_off_by_max_tokens_stays_reasoning() -> None:
    assert parse(["<think>still going"], finish=True) == ("still going", "", True)


def test_feed_after_finish_is_an_error() -> None:
    splitter = ThinkSplitter()
    splitter.finish()
    with pytest.raises(RuntimeError):
        splitter.feed("late")


@pytest.mark.parametrize(
    ("reasoning", "answer", "thinking_done", "content"),
    [
        ("", "Hello", True, "Hello"),
        ("  \n", "Hello", True, "Hello"),
        ("Let me think", "", False, "<think>Let me think</think>"),
        ("Let me think", "Hello", True, "<think>Let me think</think>Hello"),
        ("Let me think", "Hello", False, "<think>Let me think</think>"),
        ("", "", False, ""),
    ],
)
def test_wecom_stream_content(
    reasoning: str, answer: str, thinking_done: bool, content: str
) -> None:
    assert wecom_stream_content(reasoning, answer, thinking_done=thinking_done) == content


def test_wecom_stream_content_follows_a_streamed_splitter() -> None:
    splitter = ThinkSplitter()
    contents = []
    for piece in ["<think>", "plan", "</think>", "Hi"]:
        splitter.feed(piece)
        contents.append(
            wecom_stream_content(
                splitter.reasoning, splitter.answer, thinking_done=not splitter.in_think
            )
        )
    assert contents == ["", "<think>plan</think>", "<think>plan</think>", "<think>plan</think>Hi"]

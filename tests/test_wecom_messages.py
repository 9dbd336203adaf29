"""Callback parsing, mention stripping, reply builders and long-answer splitting."""

from __future__ import annotations

import copy
import random
import re
from typing import Any

import pytest

from wecom.messages import (
    MAX_CONTENT_BYTES,
    MAX_TEXT_CHARS,
    InboundEvent,
    InboundMessage,
    MalformedMessage,
    StreamRefresh,
    markdown_payload,
    parse_callback,
    split_at_boundary,
    split_think,
    stream_reply,
    strip_mention,
    text_reply,
)


def _callback(msgtype: str, **extra: Any) -> dict[str, Any]:
    """A callback shaped like WeCom's documented examples (doc 100719)."""
    data: dict[str, Any] = {
        "msgid": "CAIQ16HMjQYY/NGagIOAgAMgq4KM0AI=",
        "create_time": 1700000000,
        "aibotid": "AIBOTID",
        "chatid": "CHATID",
        "chattype": "group",
        "from": {"userid": "zhangsan"},
        "response_url": "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=X",
        "msgtype": msgtype,
    }
    data.update(extra)
    return data


# --- parse_callback: messages ---------------------------------------------------------------


def test_text_message() -> None:
    data = _callback(
        "text",
        text={"content": "@RobotA hello robot"},
        quote={"msgtype": "text", "text": {"content": "这是今日的测试情况"}},
    )

    message = parse_callback(data)

    assert isinstance(message, InboundMessage)
    assert message.msgid == "CAIQ16HMjQYY/NGagIOAgAMgq4KM0AI="
    assert message.aibotid == "AIBOTID"
    assert message.chatid == "CHATID"
    assert message.chattype == "group" and message.is_group
    assert message.userid == "zhangsan"
    assert message.response_url == data["response_url"]
    assert message.msgtype == "text"
    assert message.text == "@RobotA hello robot"
    assert message.image_urls == ()
    assert message.quote == {"msgtype": "text", "text": {"content": "这是今日的测试情况"}}
    assert message.raw is data
    assert message.conversation_key == "CHATID"


def test_single_chat_message_has_no_chatid() -> None:
    data = _callback("text", chattype="single", text={"content": "hi"})
    del data["chatid"], data["response_url"]

    message = parse_callback(data)

    assert isinstance(message, InboundMessage)
    assert message.chatid is None
    assert message.response_url is None
    assert message.quote is None
    assert not message.is_group
    assert message.conversation_key == "zhangsan"


def test_voice_message_uses_the_transcript() -> None:
    message = parse_callback(_callback("voice", chattype="single", voice={"content": "语音转写"}))

    assert isinstance(message, InboundMessage)
    assert message.msgtype == "voice"
    assert message.text == "语音转写"


def test_mixed_message_joins_text_and_collects_images() -> None:
    data = _callback(
        "mixed",
        mixed={
            "msg_item": [
                {"msgtype": "text", "text": {"content": "@RobotA 这是今日的测试情况"}},
                {"msgtype": "image", "image": {"url": "https://img/1"}},
                {"msgtype": "text", "text": {"content": "second line"}},
                {"msgtype": "image", "image": {"url": "https://img/2"}},
                {"msgtype": "sticker", "sticker": {}},
            ]
        },
    )

    message = parse_callback(data)

    assert isinstance(message, InboundMessage)
    assert message.text == "@RobotA 这是今日的测试情况\nsecond line"
    assert message.image_urls == ("https://img/1", "https://img/2")


def test_mixed_message_with_only_images_has_no_text() -> None:
    data = _callback("mixed", mixed={"msg_item": [{"msgtype": "image", "image": {"url": "u"}}]})

    message = parse_callback(data)

    assert isinstance(message, InboundMessage)
    assert message.text is None
    assert message.image_urls == ("u",)


def test_image_message_keeps_its_url() -> None:
    message = parse_callback(_callback("image", chattype="single", image={"url": "https://i"}))

    assert isinstance(message, InboundMessage)
    assert message.msgtype == "image"
    assert message.text is None
    assert message.image_urls == ("https://i",)


@pytest.mark.parametrize("msgtype", ["file", "video", "location"])
def test_file_video_and_unknown_types_have_no_text(msgtype: str) -> None:
    message = parse_callback(_callback(msgtype, chattype="single", **{msgtype: {"url": "u"}}))

    assert isinstance(message, InboundMessage)
    assert message.msgtype == msgtype
    assert message.text is None
    assert message.image_urls == ()


def test_stream_refresh() -> None:
    data = _callback("stream", stream={"id": "STREAMID"})
    del data["response_url"]

    refresh = parse_callback(data)

    assert isinstance(refresh, StreamRefresh)
    assert refresh.stream_id == "STREAMID"
    assert refresh.msgid == data["msgid"]
    assert refresh.userid == "zhangsan"
    assert refresh.chatid == "CHATID"
    assert refresh.chattype == "group"


# --- parse_callback: events -----------------------------------------------------------------


def test_enter_chat_event() -> None:
    data = _callback("event", chattype="single", event={"eventtype": "enter_chat"})
    del data["chatid"], data["response_url"]

    event = parse_callback(data)

    assert isinstance(event, InboundEvent)
    assert event.eventtype == "enter_chat"
    assert event.event == {"eventtype": "enter_chat"}
    assert event.feedback is None


def test_event_without_chattype_is_taken_as_single() -> None:
    data = _callback("event", event={"eventtype": "enter_chat"})
    del data["chattype"], data["chatid"]

    event = parse_callback(data)

    assert isinstance(event, InboundEvent)
    assert event.chattype == "single"


@pytest.mark.parametrize("key", ["feedback_event", "feedback"])
def test_feedback_event(key: str) -> None:
    body = {"id": "FEEDBACKID", "type": 2, "content": "不对", "inaccurate_reason_list": [2, 4]}
    data = _callback("event", event={"eventtype": "feedback_event", key: body})

    event = parse_callback(data)

    assert isinstance(event, InboundEvent)
    assert event.eventtype == "feedback_event"
    assert event.feedback == body


def test_template_card_event_keeps_the_event_body() -> None:
    card = {"card_type": "button_interaction", "event_key": "ok", "task_id": "T1"}
    data = _callback(
        "event", event={"eventtype": "template_card_event", "template_card_event": card}
    )

    event = parse_callback(data)

    assert isinstance(event, InboundEvent)
    assert event.event["template_card_event"] == card
    assert event.feedback is None


# --- parse_callback: malformed input ---------------------------------------------------------


def _without(path: str) -> dict[str, Any]:
    data = _callback("text", text={"content": "hi"})
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[part]
    del target[last]
    return data


def _with(path: str, value: Any, msgtype: str = "text", **extra: Any) -> dict[str, Any]:
    data = _callback(msgtype, **(extra or {"text": {"content": "hi"}}))
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[part]
    target[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_without("msgid"), "msgid"),
        (_with("msgid", ""), "msgid must not be empty"),
        (_with("msgid", 123), "msgid must be a string"),
        (_with("msgid", "m" * 513), "msgid is longer"),
        (_without("msgtype"), "msgtype"),
        (_with("msgtype", ""), "msgtype"),
        (_without("from"), "from must be an object"),
        (_with("from", "zhangsan"), "from must be an object"),
        (_without("from.userid"), "from.userid"),
        (_with("from.userid", ""), "from.userid must not be empty"),
        (_with("from.userid", ["a"]), "from.userid must be a string"),
        (_without("chattype"), "chattype"),
        (_with("chattype", "channel"), "chattype must be 'single' or 'group'"),
        (_with("chatid", 5), "chatid must be a string"),
        (_with("aibotid", {}), "aibotid must be a string"),
        (_with("response_url", 1), "response_url must be a string"),
        (_with("quote", "text"), "quote must be an object"),
        (_without("text"), "text must be an object"),
        (_with("text", "hello"), "text must be an object"),
        (_with("text.content", None), "text.content must be a string"),
        (_with("text.content", "x" * (MAX_TEXT_CHARS + 1)), "text.content is longer"),
        (_with("voice", {}, msgtype="voice", voice={}), "voice.content"),
        (_with("mixed", {"msg_item": "x"}, "mixed", mixed={}), "mixed.msg_item must be a list"),
        (_with("mixed", {"msg_item": [1]}, "mixed", mixed={}), r"mixed.msg_item\[0\]"),
        (_with("mixed", {"msg_item": [{}] * 101}, "mixed", mixed={}), "more than 100"),
        (_with("stream", {}, "stream", stream={}), "stream.id"),
        (_with("stream", {"id": ""}, "stream", stream={}), "stream.id must not be empty"),
        (_with("event", {}, "event", event={}), "event.eventtype"),
        (_with("event", "enter_chat", "event", event={}), "event must be an object"),
    ],
)
def test_malformed_callbacks_are_rejected_with_a_clear_message(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(MalformedMessage, match=message):
        parse_callback(data)


@pytest.mark.parametrize("data", [[], "text", None, 5])
def test_non_object_callbacks_are_rejected(data: Any) -> None:
    with pytest.raises(MalformedMessage):
        parse_callback(data)


def test_parsing_does_not_modify_the_input() -> None:
    data = _callback("mixed", mixed={"msg_item": [{"msgtype": "text", "text": {"content": "a"}}]})
    before = copy.deepcopy(data)

    parse_callback(data)

    assert data == before


def test_malformed_message_is_a_value_error() -> None:
    assert issubclass(MalformedMessage, ValueError)


# --- strip_mention --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@RobotA hello", "hello"),
        ("@RobotA\u2005hello", "hello"),
        ("@RobotA\u3000你好", "你好"),
        ("@机器人 这是今日的测试情况", "这是今日的测试情况"),
        ("@RobotA @lisi hello", "hello"),
        ("@RobotA\u2005@RobotB\u2005hello", "hello"),
        ("hello @RobotA what is up", "hello what is up"),
        ("hello @RobotA", "hello"),
        ("@RobotA", ""),
        ("  @RobotA  ", ""),
        ("@RobotA\u2005", ""),
        ("mail me at a@b.com", "mail me at a@b.com"),
        ("@机器人，请问报销流程", "请问报销流程"),
        ("@RobotA： 你好", "你好"),
        ("@RobotA, hello", "hello"),
        ("no mention here", "no mention here"),
        ("@RobotA first line\nsecond line", "first line\nsecond line"),
        ("@RobotA\n\nparagraph", "paragraph"),
        ("", ""),
    ],
)
def test_strip_mention(text: str, expected: str) -> None:
    assert strip_mention(text) == expected


# --- reply builders -------------------------------------------------------------------------


def test_stream_reply_shape() -> None:
    assert stream_reply(stream_id="s1") == {
        "msgtype": "stream",
        "stream": {"id": "s1", "finish": False, "content": ""},
    }
    assert stream_reply(stream_id="s1", content="答", finish=True, feedback_id="f1") == {
        "msgtype": "stream",
        "stream": {"id": "s1", "finish": True, "content": "答", "feedback": {"id": "f1"}},
    }


def test_text_and_markdown_payloads() -> None:
    assert text_reply("欢迎") == {"msgtype": "text", "text": {"content": "欢迎"}}
    assert markdown_payload("**hi**") == {"msgtype": "markdown", "markdown": {"content": "**hi**"}}


def test_builders_refuse_content_over_the_limit_instead_of_truncating() -> None:
    at_limit = "中" * (MAX_CONTENT_BYTES // 3) + "a" * (MAX_CONTENT_BYTES % 3)
    assert len(at_limit.encode()) == MAX_CONTENT_BYTES
    stream_reply(stream_id="s", content=at_limit)
    markdown_payload(at_limit)

    for build in (
        lambda c: stream_reply(stream_id="s", content=c),
        text_reply,
        markdown_payload,
    ):
        with pytest.raises(ValueError, match="split_at_boundary"):
            build(at_limit + "a")


def test_stream_reply_needs_an_id() -> None:
    with pytest.raises(ValueError):
        stream_reply(stream_id="")


# --- split_think ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "think", "answer"),
    [
        ("plain answer", None, "plain answer"),
        ("<think>plan</think>Answer", "plan", "Answer"),
        ("<think>\nplan\n</think>\n\nAnswer", "plan", "Answer"),
        ("<think>still thinking", "still thinking", ""),
        ("", None, ""),
    ],
)
def test_split_think(content: str, think: str | None, answer: str) -> None:
    assert split_think(content) == (think, answer)


# --- split_at_boundary ----------------------------------------------------------------------


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def test_short_text_is_not_split() -> None:
    assert split_at_boundary("短文本", 100) == ("短文本", "")
    assert split_at_boundary("", 100) == ("", "")
    exact = "a" * 50
    assert split_at_boundary(exact, 50) == (exact, "")


def test_prefers_the_last_paragraph_break() -> None:
    text = "a" * 40 + "\n\n" + "b" * 30 + "\nline\n\n" + "c" * 40

    head, rest = split_at_boundary(text, 100)

    assert head == "a" * 40 + "\n\n" + "b" * 30 + "\nline\n\n"
    assert rest == "c" * 40


def test_falls_back_to_a_line_break() -> None:
    text = "a" * 60 + "\n" + "b" * 20 + " c. d\n" + "e" * 40

    head, _ = split_at_boundary(text, 100)

    assert head == "a" * 60 + "\n" + "b" * 20 + " c. d\n"


def test_falls_back_to_a_cjk_sentence_end() -> None:
    text = "这是第一句。" * 10 + "没有结尾的长句子" * 10

    head, rest = split_at_boundary(text, 200)

    assert head.endswith("。")
    assert head + rest == text
    assert _size(head) <= 200


def test_sentence_end_keeps_closing_quotes() -> None:
    text = "他说：“好的。”" * 5 + "后面" * 50

    head, _ = split_at_boundary(text, 120)

    assert head.endswith("。”")


def test_latin_sentence_end_needs_following_whitespace() -> None:
    text = "x" * 50 + "! Then pi is 3.14159265358979" + "y" * 40

    head, rest = split_at_boundary(text, 100)

    assert head == "x" * 50 + "!"
    assert rest.startswith(" Then pi is 3.14159")


def test_falls_back_to_whitespace() -> None:
    text = "word " * 30

    head, rest = split_at_boundary(text, 52)

    assert head == "word " * 10
    assert head + rest == text


def test_hard_cut_never_splits_a_character() -> None:
    text = "😀" * 100

    head, rest = split_at_boundary(text, 50)

    assert head == "😀" * 12
    assert head + rest == text


def test_boundaries_in_the_first_half_are_skipped() -> None:
    text = "a" * 10 + "\n\n" + "b" * 200

    head, _ = split_at_boundary(text, 100)

    assert head == "a" * 10 + "\n\n" + "b" * 88  # hard cut, not a 12-byte piece


@pytest.mark.parametrize(
    ("tag", "offset"), [(tag, n) for tag in ("<think>", "</think>") for n in range(1, len(tag))]
)
def test_never_cuts_inside_a_think_tag(tag: str, offset: int) -> None:
    text = "x" * (100 - offset) + tag + "y" * 200

    head, rest = split_at_boundary(text, 100)

    assert head == "x" * (100 - offset)
    assert rest.startswith(tag)


def test_limit_must_leave_room_for_a_tag() -> None:
    with pytest.raises(ValueError):
        split_at_boundary("anything", 7)


_ALPHABET = [
    *"abcdefghij     ",
    *["\n", "\n\n", "。", "！", "？", "；", ".", "!", "?", "”"],
    *"中文字符测试企业微信",
    *["😀", "👍🏽", "é", "ß", "\u3000", "\u2005", "<think>", "</think>"],
]


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 400)))


def test_split_properties_on_random_texts() -> None:
    rng = random.Random(20240607)
    for _ in range(3000):
        text = _random_text(rng)
        limit = rng.randint(8, 600)

        head, rest = split_at_boundary(text, limit)

        assert head + rest == text
        assert _size(head) <= limit
        if _size(text) <= limit:
            assert rest == ""
            continue
        assert head, "a split must make progress"
        for tag in ("<think>", "</think>"):
            start = text.find(tag, max(0, len(head) - len(tag) + 1))
            assert not (0 <= start < len(head) < start + len(tag)), "cut inside a tag"


def test_repeated_splitting_reassembles_long_answers() -> None:
    rng = random.Random(7)
    text = "".join(_random_text(rng) for _ in range(200))
    pieces = []
    rest = text
    while rest:
        head, rest = split_at_boundary(rest, MAX_CONTENT_BYTES // 8)
        assert head
        assert _size(head) <= MAX_CONTENT_BYTES // 8
        pieces.append(head)

    assert "".join(pieces) == text
    assert len(pieces) > 1


def test_boundary_preference_order_on_random_texts() -> None:
    """Whenever a stronger boundary sits in the second half of the window, it is chosen."""
    rng = random.Random(99)
    for _ in range(2000):
        text = _random_text(rng)
        limit = rng.randint(16, 400)
        if _size(text) <= limit:
            continue

        head, _ = split_at_boundary(text, limit)

        window_chars = 0
        used = 0
        for char in text:
            if used + _size(char) > limit:
                break
            used += _size(char)
            window_chars += 1
        window = text[:window_chars]
        half = 0
        used = 0
        for index, char in enumerate(window):
            used += _size(char)
            if used >= limit / 2:
                half = index + 1
                break
        floor = max(half, 1)
        paragraphs = [m.end() for m in re.finditer(r"\n[^\S\n]*\n", window) if m.end() >= floor]
        late_newline = window.rfind("\n") + 1
        if paragraphs:
            assert len(head) == paragraphs[-1]
        elif late_newline >= floor:
            assert len(head) == late_newline
        elif any(char.isspace() for char in window[floor - 1 :]):
            assert head[-1].isspace() or head[-1] in "。！？；.!?\"')]}”’」』）】》"

"""Files employees send in a 1:1 chat: read in the worker, kept for the conversation, used later.

WeCom's file host is `LongConnSimulator`'s HTTP side (encrypted media, five-minute URLs).
The worker stage (`turn_generate`) runs in this process; the connector and the callback
simulator play the two doors. The last test runs everything as processes with the model.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.audit.registry import bot_side_get
from apps.bots.conversation_files import ConversationFile
from apps.bots.models import Bot, Turn
from apps.bots.services import generate
from apps.bots.services.files import FILE_KINDS, file_excerpts, prompt_with_files
from apps.bots.services.longconn import ForwardJob, longconn_callback_receive
from tests.conftest import turn_terminal
from wecom.simulator_longconn_thread import LongConnSimulatorThread

pytestmark = pytest.mark.django_db(transaction=True)

BOT_ID = "aib-files"
SECRET = "files-secret-value"
HANDBOOK = (
    "# 差旅制度\n\n出差住宿标准：一线城市每晚不超过六百元。\n\n"
    "## 报销\n\n差旅费用须在出差结束后三十天内提交报销申请。\n\n"
    "## 年假\n\n入职满一年享有五天带薪年假。\n"
)


@pytest.fixture
def long_bot(make_bot):
    return make_bot(
        connection_mode=Bot.ConnectionMode.LONG_CONNECTION,
        aibotid=BOT_ID,
        longconn_secret=SECRET,
        token="",
        encoding_aes_key="",
        rate_limit_per_minute=50,
    )


@pytest.fixture
def media_host():
    with LongConnSimulatorThread(bots={BOT_ID: SECRET}) as host:
        yield host


def _receive(bot, media_host, data: bytes, **kwargs) -> Turn:
    """A file callback through the long-connection door, as the connector feeds it in."""
    url, aeskey = media_host.sim.serve_media(data)
    body = {
        "msgid": f"m-{time.monotonic_ns()}",
        "aibotid": BOT_ID,
        "chattype": "single",
        "from": {"userid": kwargs.pop("userid", "zhangsan")},
        "msgtype": kwargs.pop("msgtype", "file"),
    }
    body[body["msgtype"]] = {"url": url, "aeskey": aeskey, **kwargs}
    job = longconn_callback_receive(
        bot_id=bot.pk, body=body, req_id=f"req-{body['msgid']}", received_at=timezone.now()
    )
    assert isinstance(job, ForwardJob)
    return Turn.objects.get(pk=job.turn_id)


def _worker(turn: Turn) -> Turn:
    generate.turn_generate(turn_id=turn.pk)
    return Turn.objects.get(pk=turn.pk)


def test_a_markdown_file_is_read_stored_and_acknowledged(long_bot, media_host):
    turn = _worker(_receive(long_bot, media_host, HANDBOOK.encode(), filename="差旅.md"))

    assert turn.status == Turn.Status.ANSWERED, turn.error
    assert turn.fixed_reply_reason == Turn.FixedReplyReason.FILE_READ
    assert "差旅.md" in turn.answer and "已读" in turn.answer
    assert turn.question == "📎 差旅.md"  # what the transcript and the ledger show
    file = ConversationFile.objects.get(turn=turn)
    assert file.status == ConversationFile.Status.READ and file.kind == "md"
    assert "六百元" in file.text and file.size_bytes == len(HANDBOOK.encode())
    assert (file.media_url, file.media_aeskey) == ("", "")  # the download capability is gone
    # The transcript export shows the file with its text
    record = bot_side_get().turn_export_record(turn)
    assert record["file"]["filename"] == "差旅.md" and "六百元" in record["file"]["text"]


def test_the_retention_purge_of_the_message_deletes_the_files_text(long_bot, media_host):
    turn = _worker(_receive(long_bot, media_host, HANDBOOK.encode(), filename="差旅.md"))
    assert ConversationFile.objects.filter(turn=turn).exists()

    purged = bot_side_get().turns_purge(
        bot=long_bot, cutoff=timezone.now() + timedelta(seconds=1), limit=10
    )

    assert purged == [turn.pk]
    assert not ConversationFile.objects.exists()  # no longer a source of the conversation


def test_a_file_without_a_name_is_recognised_by_its_bytes(long_bot, media_host):
    turn = _worker(_receive(long_bot, media_host, "纯文本的说明：报销三十天内提交。".encode()))
    assert turn.fixed_reply_reason == Turn.FixedReplyReason.FILE_READ, turn.answer
    assert ConversationFile.objects.get(turn=turn).kind == "txt"


@pytest.mark.parametrize(
    ("data", "filename", "reason", "words"),
    [
        (b"PK\x03\x04" + b"\0" * 64, "slides.pptx", "unsupported", "PDF"),
        (b"\x00\x01\x02\xff" * 10, "", "unsupported", "PDF"),
        (b"x" * 2048, "big.txt", "too_large", "过大"),
        (b"%PDF-1.4 not really", "broken.pdf", "corrupt", "损坏"),
    ],
)
def test_refused_files_get_a_clear_reply(
    long_bot, media_host, settings, data, filename, reason, words
):
    settings.WECOM_FILE_MAX_BYTES = 1024
    turn = _worker(_receive(long_bot, media_host, data, filename=filename))

    assert turn.status == Turn.Status.ANSWERED, turn.error
    assert turn.fixed_reply_reason == Turn.FixedReplyReason.FILE_REFUSED
    assert words in turn.answer
    file = ConversationFile.objects.get(turn=turn)
    assert (file.status, file.refusal) == (ConversationFile.Status.REFUSED, reason)
    assert file.text == "" and file.media_url == ""


def test_an_expired_link_asks_to_send_the_file_again(long_bot, media_host):
    turn = _receive(long_bot, media_host, b"hello")
    media_host.sim._media.clear()  # WeCom's five minutes are over
    turn = _worker(turn)
    assert ConversationFile.objects.get(turn=turn).refusal == "download"
    assert "重新发送" in turn.answer


def test_an_image_gets_a_polite_reply_without_the_worker(long_bot, media_host):
    url, aeskey = media_host.sim.serve_media(b"\x89PNG")
    body = {
        "msgid": "img-1",
        "aibotid": BOT_ID,
        "chattype": "single",
        "from": {"userid": "zhangsan"},
        "msgtype": "image",
        "image": {"url": url, "aeskey": aeskey},
    }
    longconn_callback_receive(bot_id=long_bot.pk, body=body, req_id="r", received_at=timezone.now())
    turn = Turn.objects.get(msgid="img-1")
    assert turn.status == Turn.Status.REJECTED
    assert "图片" in turn.answer
    assert not ConversationFile.objects.exists()


def test_later_questions_get_the_most_relevant_paragraphs_within_the_budget(long_bot, media_host):
    _worker(_receive(long_bot, media_host, HANDBOOK.encode(), filename="差旅.md"))
    question = Turn.objects.create(
        bot=long_bot,
        conversation=Turn.objects.get().conversation,
        msgid="q-1",
        stream_id="s-q-1",
        question="出差住宿标准是多少",
        received_at=timezone.now(),
    )
    excerpts = file_excerpts(turn=question, question=question.question, budget_chars=40)
    assert [e.text for e in excerpts] == ["差旅制度\n出差住宿标准：一线城市每晚不超过六百元。"]
    prompt = prompt_with_files(question=question.question, excerpts=excerpts)
    assert prompt.index("六百元") < prompt.index("出差住宿标准是多少")
    # Another employee's conversation never sees zhangsan's file
    other = _receive(long_bot, media_host, b"x", userid="lisi")
    assert file_excerpts(turn=other, question="住宿", budget_chars=400) == []
    assert "md" in FILE_KINDS


def test_callback_mode_file_is_decrypted_with_the_bots_key(bot, simulator_for, media_host):
    url, _key = media_host.sim.serve_media(HANDBOOK.encode(), aeskey=bot.encoding_aes_key)
    sim = simulator_for(bot)
    reply = sim.decrypt_reply(sim.post_message(sim.file_message(url, userid="wangwu")))
    assert reply["stream"]["finish"] is False  # admitted: the worker reads it
    turn = _worker(Turn.objects.get(stream_id=reply["stream"]["id"]))
    assert turn.fixed_reply_reason == Turn.FixedReplyReason.FILE_READ, turn.answer
    assert "六百元" in ConversationFile.objects.get(turn=turn).text


@pytest.mark.slow
def test_long_connection_file_then_question_end_to_end(
    long_bot, media_host, start_worker, settings
):
    from tests.test_longconn_connector import ConnectorProcess

    start_worker()
    connector = ConnectorProcess(media_host.url)
    try:
        media_host.wait_subscribed(BOT_ID, timeout=60)
        started = time.monotonic()
        frame = media_host.push_media(BOT_ID, HANDBOOK.encode(), filename="差旅.md")
        told = media_host.answer(frame, started=started, timeout=120)
        assert told.finished and "差旅.md" in told.content, told
        asked = media_host.ask(BOT_ID, "出差住宿标准是多少", userid="zhangsan", timeout=180)
        without = media_host.ask(BOT_ID, "出差住宿标准是多少", userid="lisi", timeout=180)
    finally:
        connector.stop()
    assert asked.finished and without.finished
    with_file, no_file = turn_terminal(asked.msgid), turn_terminal(without.msgid)
    assert with_file.status == no_file.status == Turn.Status.ANSWERED
    # The same question carried the file's paragraphs in zhangsan's chat only.
    assert with_file.prompt_tokens > no_file.prompt_tokens + 20

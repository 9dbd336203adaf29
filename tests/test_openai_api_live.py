"""The OpenAI-compatible API as clients use it: the official `openai` client against the
real ASGI app under uvicorn, answered by a real Celery worker with the bundled model."""

from __future__ import annotations

import io

import openai
import pytest
from django.core.management import call_command

from apps.audit.models import LedgerEntry
from apps.bots.models import Turn
from apps.directory.models import DirectoryUser
from apps.knowledge.models import KnowledgeBase

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HANDBOOK = """# 员工手册

## 年假

员工入职满一年后，每年享有五天带薪年假。工作满十年后，年假增加到十天。
"""

RETURNS = """# 退货

商品签收后七天内可以无理由退货。年假期间客服照常处理退货。
"""


def apikey_create(*args: str) -> str:
    out = io.StringIO()
    call_command("apikey_create", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip()


def client_for(base: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{base}/v1", api_key=key, max_retries=0, timeout=240)


def test_the_official_client_gets_answers_streamed_and_not(asgi_server, start_worker, bot):
    start_worker(WECOM_STREAM_FLUSH_SECONDS="0.05")
    client = client_for(asgi_server, apikey_create("hr", "client test"))
    assert [model.id for model in client.models.list()] == ["hr"]

    # Given one question asked without streaming
    completion = client.chat.completions.create(
        model="hr", messages=[{"role": "user", "content": "What is an annual leave day?"}]
    )
    # Then the answer is the turn's, with its token counts, on the api channel and in the ledger
    turn = Turn.objects.get()
    assert turn.status == Turn.Status.ANSWERED, (turn.status, turn.error)
    assert completion.choices[0].message.content == turn.answer
    assert completion.choices[0].finish_reason in {"stop", "length"}
    assert completion.usage.completion_tokens == turn.completion_tokens > 0
    assert completion.usage.prompt_tokens == turn.prompt_tokens > 0
    assert turn.channel == Turn.Channel.API and turn.conversation.external
    assert LedgerEntry.objects.filter(ref__endswith=f":{turn.pk}").count() == 1

    # When the next one streams
    stream = client.chat.completions.create(
        model="hr",
        messages=[{"role": "user", "content": "And a sick leave day?"}],
        stream=True,
        stream_options={"include_usage": True},
        user="room-1",
    )
    chunks = list(stream)
    # Then the pieces add up to the stored answer, the finish reason and usage come last
    streamed = Turn.objects.latest("pk")
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == streamed.answer and streamed.status == Turn.Status.ANSWERED
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) > 1
    assert chunks[-2].choices[0].finish_reason in {"stop", "length"}
    assert chunks[-1].usage.completion_tokens == streamed.completion_tokens

    # And the errors are the client's own exceptions
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="it", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        client_for(asgi_server, "sk-wai-0000000000.wrong").models.list()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="hr", messages=[])


def test_an_external_key_reads_only_open_knowledge_and_a_bound_key_its_employees(
    asgi_server, start_worker, make_bot, tmp_path
):
    # Given an employee handbook and a customer FAQ opened to external users
    (tmp_path / "handbook.md").write_text(HANDBOOK, encoding="utf-8")
    (tmp_path / "returns.md").write_text(RETURNS, encoding="utf-8")
    call_command("kb_ingest", "handbook", str(tmp_path / "handbook.md"), stdout=io.StringIO())
    call_command("kb_ingest", "faq", str(tmp_path / "returns.md"), stdout=io.StringIO())
    KnowledgeBase.objects.filter(slug="faq").update(open_to_external=True)
    bot = make_bot(max_tokens=24, retrieval_top_k=3)
    bot.knowledge_bases.set(KnowledgeBase.objects.all())
    DirectoryUser.objects.create(userid="eng1", departments=["Engineering"])
    start_worker()
    external = client_for(asgi_server, apikey_create("hr", "public"))
    employee = client_for(asgi_server, apikey_create("hr", "staff", "--userid", "eng1"))

    for client in (external, employee):
        client.chat.completions.create(
            model="hr", messages=[{"role": "user", "content": "入职一年有几天年假？"}]
        )

    # Then the external key's answer never drew on the handbook; the employee's did
    asked_outside, asked_inside = Turn.objects.order_by("pk")
    outside_files = {source["file"] for source in asked_outside.sources}
    inside_files = {source["file"] for source in asked_inside.sources}
    assert "handbook.md" not in outside_files and "五天" not in asked_outside.answer
    assert "handbook.md" in inside_files, (asked_inside.sources, asked_inside.answer)
    assert asked_outside.conversation.external and not asked_inside.conversation.external

"""A conversation opens as a chat thread under one reason, each turn shown logged (issue 17,
item 1): bot conversations and archived human chats, scoped like the transcript lists."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.audit.models import AccessLog, ArchivedMessage, ArchiveSource, AuditPolicy
from apps.audit.services.policy import policy_evaluate
from apps.audit.services.review import review_scope_set
from apps.bots.models import Conversation, Turn
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.segment import segment_for_search
from tests.access_reason import REASON, open_with_reason
from tests.test_audit_review import policy  # noqa: F401 - the policy fixture

pytestmark = pytest.mark.django_db

PASSAGE = "员工入职满一年后，每年享有五天带薪年假。"


def passage_chunk() -> Chunk:
    kb = KnowledgeBase.objects.create(name="员工手册", slug="handbook")
    document = Document.objects.create(
        kb=kb, file="handbook.md", original_filename="handbook.md", title="员工手册",
        generation=1, active_generation=1, active_version=1, status=Document.Status.READY,
    )  # fmt: skip
    return Chunk.objects.create(
        document=document, document_version=1, generation=1, position=0, text=PASSAGE,
        search_text=segment_for_search(PASSAGE), token_count=20, embedding=[1.0, 0.0, 0.0],
        embedding_dimensions=3, embedding_model="none",
    )  # fmt: skip


def make_thread(bot, policy: AuditPolicy, *, userid: str = "wangwu") -> list[Turn]:  # noqa: F811
    """An older turn with reasoning, a cited passage and feedback; a newer flagged one."""
    conversation = Conversation.objects.create(bot=bot, chat_type="single", userid=userid)
    chunk = passage_chunk() if not Chunk.objects.exists() else Chunk.objects.get()
    now = timezone.now()
    flagged = policy_evaluate(policies=[policy], text="内部价格是一百元")
    older = Turn.objects.create(
        bot=bot, conversation=conversation, msgid=f"m1-{bot.slug}", stream_id=f"s1-{bot.slug}",
        question="入职一年有几天年假？", answer="五天[1]", reasoning="查手册的年假一节",
        sources=[{
            "chunk": chunk.pk, "document": chunk.document_id, "document_version": 1,
            "file": "handbook.md", "title": "员工手册", "heading": "年假",
            "knowledge_base": "handbook", "score": 0.8123,
        }],
        status=Turn.Status.ANSWERED, received_at=now - dt.timedelta(minutes=5),
        first_token_at=now - dt.timedelta(minutes=5) + dt.timedelta(seconds=1),
        finished_at=now - dt.timedelta(minutes=5) + dt.timedelta(seconds=3),
        feedback=Turn.Feedback.INACCURATE, feedback_detail={"content": "漏了十年的情况"},
    )  # fmt: skip
    newer = Turn.objects.create(
        bot=bot, conversation=conversation, msgid=f"m2-{bot.slug}", stream_id=f"s2-{bot.slug}",
        question="报价多少？", answer="内部价格是一百元", status=Turn.Status.ANSWERED,
        filter_decisions=[{"subject": "answer", **flagged.as_record()}], received_at=now,
    )  # fmt: skip
    return [older, newer]


def staff(username: str, *perms: str) -> tuple[User, Client]:
    user = User.objects.create_user(username, password="x", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="bots", codename__in=perms)
    )
    client = Client()
    client.force_login(user)
    return user, client


@pytest.fixture
def scenario(make_bot, policy, admin_user):  # noqa: F811
    """HR's conversation (officer_a assigned) and IT's (officer_b assigned)."""
    hr, it = make_bot(), make_bot(name="IT助手", slug="it")
    policy.bots.add(hr, it)
    hr_turns, it_turns = make_thread(hr, policy), make_thread(it, policy, userid="lisi")
    perms = ("view_turn", "view_conversation")
    officer_a, client_a = staff("officer_a", *perms)
    officer_b, client_b = staff("officer_b", *perms)
    review_scope_set(officer=officer_a, bots=[hr], sources=[], actor=admin_user)
    review_scope_set(officer=officer_b, bots=[it], sources=[], actor=admin_user)
    return hr_turns, it_turns, client_a, client_b


def conversation_url(turn: Turn) -> str:
    return reverse("admin:bots_conversation_change", args=[turn.conversation_id])


def test_conversation_reads_as_a_chat_thread_without_raw_json(scenario) -> None:
    (older, _newer), _, client, _ = scenario
    page = open_with_reason(client, conversation_url(older)).content.decode()
    # Bubbles in time order: the older question before the newer one
    assert 'id="chat-thread"' in page
    assert page.index("入职一年有几天年假") < page.index("报价多少")
    # The reasoning is collapsible; the citation expands to the passage text with its score
    assert '<details class="chat-think">' in page and "查手册的年假一节" in page
    citation = page[page.index('<details class="chat-citation">') :]
    assert "员工手册 · 年假" in citation and "0.812" in citation and PASSAGE in citation
    # The policy hit and the feedback in words, no JSON of either
    assert "答案检查" in page and "“内部价格”" in page
    assert "chat-feedback-2" in page and "漏了十年的情况" in page
    assert '"matches"' not in page and "&quot;matches&quot;" not in page
    assert '"chunk"' not in page and "&quot;chunk&quot;" not in page


def test_one_reason_per_conversation_and_every_turn_shown_is_logged(scenario) -> None:
    (older, newer), _, client, _ = scenario
    ask = client.get(conversation_url(older)).content.decode()
    assert "access-reason-form" in ask and "内部价格" not in ask
    open_with_reason(client, conversation_url(older))
    opened = AccessLog.objects.get(object_type="bots.conversation")
    assert opened.reason == REASON["reason"] and opened.opened_with is None
    shown = AccessLog.objects.filter(object_type="bots.turn")
    assert sorted(shown.values_list("object_id", flat=True)) == sorted(
        [str(older.pk), str(newer.pk)]
    )
    assert {(row.reason, row.opened_with_id) for row in shown} == {(opened.reason, opened.pk)}
    # The cited passage the thread shows is logged too, as a knowledge search logs it
    passage = AccessLog.objects.get(object_type="knowledge.chunk")
    assert (passage.object_id, passage.opened_with_id) == (str(Chunk.objects.get().pk), opened.pk)

    # A turn opened from the thread opens without asking again, logged under that reason
    turn_page = client.get(reverse("admin:bots_turn_change", args=[newer.pk])).content.decode()
    assert "access-reason-form" not in turn_page and "内部价格是一百元" in turn_page
    latest = AccessLog.objects.filter(object_type="bots.turn").order_by("-pk").first()
    assert (latest.object_id, latest.opened_with_id) == (str(newer.pk), opened.pk)
    # ...and shows the turn as its bubble, not the JSON fields
    assert 'id="chat-thread"' in turn_page and "&quot;matches&quot;" not in turn_page


def test_the_conversation_reason_expires_and_covers_only_its_turns(scenario) -> None:
    (older, _), (other, _), client, _ = scenario
    open_with_reason(client, conversation_url(older))
    # A turn of a conversation the officer did not open still asks (other bot: 404 anyway)
    assert client.get(reverse("admin:bots_turn_change", args=[other.pk])).status_code == 404
    # Once the reason is older than the reuse window, the turn asks again
    AccessLog.objects.filter(object_type="bots.conversation").update(
        created_at=timezone.now() - dt.timedelta(minutes=31)
    )
    again = client.get(reverse("admin:bots_turn_change", args=[older.pk])).content.decode()
    assert "access-reason-form" in again and "五天" not in again


def test_conversation_thread_scope(scenario, admin_client) -> None:
    (older, _), _, client_a, client_b = scenario
    url = conversation_url(older)
    # Anonymous: the sign-in page
    anonymous = Client().get(url)
    assert anonymous.status_code == 302 and "/login/" in anonymous["Location"]
    # Staff without the view permissions: refused (the record's existence not confirmed)
    _, no_perm = staff("staff_plain")
    assert no_perm.get(reverse("admin:bots_conversation_changelist")).status_code == 403
    assert no_perm.get(url).status_code == 404
    assert open_with_reason(no_perm, url).status_code == 404
    # The officer of another bot: 404 with or without a reason
    assert client_b.get(url).status_code == 404
    assert open_with_reason(client_b, url).status_code == 404
    assert not AccessLog.objects.exists()
    # The assigned officer: the thread after the reason
    assert "入职一年有几天年假" in open_with_reason(client_a, url).content.decode()
    # The admin: the thread without a reason, still logged
    page = admin_client.get(url).content.decode()
    assert "入职一年有几天年假" in page
    assert AccessLog.objects.filter(username="admin", object_type="bots.turn").count() == 2


def archived(
    source: ArchiveSource, number: int, sender: str, text: str, **fields
) -> ArchivedMessage:
    return ArchivedMessage.objects.create(
        source=source, msgid=f"a{number}", seq=number, publickey_ver=1, action="send",
        sender=sender, tolist=["lisi" if sender == "zhangsan" else "zhangsan"],
        msgtime=timezone.now() - dt.timedelta(minutes=10 - number), msgtype="text", text=text,
        **fields,
    )  # fmt: skip


@pytest.fixture
def archive_chat(admin_user, policy):  # noqa: F811
    source = ArchiveSource.objects.create(name="总部", corp_id="ww1", secret="s")
    other_source = ArchiveSource.objects.create(name="分部", corp_id="ww2", secret="s")
    messages = [
        archived(source, 1, "zhangsan", "周五开会吗"),
        archived(
            source,
            2,
            "lisi",
            "内部价格发你了",
            policy_action="flag",
            llm_review={str(policy.pk): {"risk": 0.9, "label": "泄密", "reason": "提到内部价格"}},
        ),
        archived(source, 3, "zhangsan", "收到"),
    ]
    elsewhere = archived(other_source, 4, "wangwu", "分部的消息")
    officer = User.objects.create_user("officer_c", password="x", is_staff=True)
    officer.user_permissions.set(
        Permission.objects.filter(content_type__app_label="audit", codename="view_archivedmessage")
    )
    review_scope_set(officer=officer, bots=[], sources=[source], actor=admin_user)
    client = Client()
    client.force_login(officer)
    return messages, elsewhere, client


def test_archived_chat_as_a_thread_under_one_reason(archive_chat) -> None:
    (first, flagged, last), elsewhere, client = archive_chat
    url = reverse("admin:audit_archivedmessage_change", args=[first.pk])
    page = open_with_reason(client, url).content.decode()
    assert 'id="archive-thread"' in page
    assert page.index("周五开会吗") < page.index("内部价格发你了") < page.index("收到")
    # The policy result and the LLM review in words, not JSON
    assert "chat-policy-hit" in page and "答案检查" in page and "提到内部价格" in page
    assert "&quot;risk&quot;" not in page
    # Every message shown is logged, linked to the reason's entry
    opened = AccessLog.objects.get(object_id=str(first.pk))
    shown = AccessLog.objects.exclude(pk=opened.pk)
    assert sorted(shown.values_list("object_id", flat=True)) == [str(flagged.pk), str(last.pk)]
    assert set(shown.values_list("opened_with", flat=True)) == {opened.pk}
    # A message of the chat opens without another reason; one of another source: 404
    neighbour = client.get(reverse("admin:audit_archivedmessage_change", args=[flagged.pk]))
    assert "access-reason-form" not in neighbour.content.decode()
    assert "内部价格发你了" in neighbour.content.decode()
    assert (
        client.get(reverse("admin:audit_archivedmessage_change", args=[elsewhere.pk])).status_code
        == 404
    )

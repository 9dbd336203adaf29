"""Issue 9, knowledge: restricted passages reach only people allowed to read them.

REST search: being staff grants nothing; searching everything or as another employee needs
`knowledge.search_all_audiences` and is access-logged. Group chats: every member reads the
answer, so only passages all members may read are used, and an unregistered group gets
only knowledge open to everyone. Ingestion is bounded: zip parts, pages, paragraphs,
passages, run time and memory, on a worker of its own.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import docx
import pypdf
import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.contrib.auth.models import Permission
from django.core.files import File
from django.core.management import call_command
from django.urls import include, path, reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.audit.models import AccessLog, OperatorAuditEntry
from apps.bots.models import Conversation, Turn
from apps.bots.services.generate import _knowledge_hits
from apps.directory.models import GroupChat
from apps.directory.selectors import Readers, chat_readers
from apps.directory.services import directory_user_save
from apps.knowledge.models import Chunk, Document, KnowledgeBase
from apps.knowledge.parsing import DocumentParseError, parse_document
from apps.knowledge.parsing.document import MAX_PARAGRAPHS
from apps.knowledge.parsing.pdf import MAX_PAGES
from apps.knowledge.services import ingest as ingest_service
from apps.knowledge.services.config import document_upload, knowledge_base_ensure
from apps.knowledge.services.retrieval import knowledge_retrieve
from apps.knowledge.tasks import document_ingest as document_ingest_task
from tests.conftest import BASE_DIR, worker_env
from wecom_ai import runner

# The project includes apps.knowledge.urls under /api/; the REST tests do the same.
urlpatterns = [path("api/", include("apps.knowledge.urls"))]

pytestmark = pytest.mark.django_db

URL = "/api/knowledge/search/"
TRAVEL = "差旅报销标准"
HANDBOOK = "# 员工手册\n\n## 年假\n\n员工入职满一年后，每年享有五天带薪年假。\n"
SALARY = "# 薪酬制度\n\n## 薪级表\n\n工程师一级月薪两万元，二级月薪三万元。薪级表属于机密信息。\n"


def ingest(tmp_path: Path, slug: str, name: str, text: str, *departments: str) -> None:
    file = tmp_path / slug / name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text, encoding="utf-8")
    args = [arg for department in departments for arg in ("--department", department)]
    call_command("kb_ingest", slug, str(file), *args, stdout=io.StringIO())


@pytest.fixture(autouse=True)
def _media(settings, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")


# --- item 2: REST search and the shell --------------------------------------------------------


@pytest.fixture
def finance_kb(tmp_path: Path) -> None:
    """A finance-only knowledge base; alice works in finance, bob in engineering."""
    ingest(
        tmp_path, "finance", "travel.md", f"# 差旅\n\n{TRAVEL}：住宿每晚不超过五百元。", "财务部"
    )
    directory_user_save(userid="alice", departments=["财务部"])
    directory_user_save(userid="bob", departments=["研发部"])


def client_for(django_user_model, username: str, *, staff: bool = False, perms=()) -> APIClient:
    user = django_user_model.objects.create_user(username, password="unused", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def documents(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [hit["document"] for hit in response.json()["hits"]]


@pytest.mark.urls(__name__)
def test_staff_without_the_permission_search_only_their_own_audience(
    finance_kb, django_user_model
) -> None:
    # Given staff accounts without the search permission: bob (engineering) and ops (no
    # directory entry at all)
    bob = client_for(django_user_model, "bob", staff=True)
    ops = client_for(django_user_model, "ops", staff=True)
    # Then neither reads the finance-only passage, with or without naming an employee
    assert documents(bob.get(URL, {"q": TRAVEL})) == []
    assert documents(ops.get(URL, {"q": TRAVEL})) == []
    refused = ops.get(URL, {"q": TRAVEL, "userid": "alice", "reason": "curious"})
    assert refused.status_code == 403
    assert "Traceback" not in refused.content.decode()
    assert not AccessLog.objects.exists()


@pytest.mark.urls(__name__)
def test_search_permission_gates_unfiltered_and_on_behalf_search_and_logs_it(
    finance_kb, django_user_model
) -> None:
    auditor = client_for(django_user_model, "auditor", perms=["search_all_audiences"])
    # On-behalf and unfiltered searches need a reason, and nothing is searched without one
    assert auditor.get(URL, {"q": TRAVEL, "userid": "alice"}).status_code == 400
    assert auditor.get(URL, {"q": TRAVEL}).status_code == 400
    assert not AccessLog.objects.exists()
    # With one, the permission holder searches as alice and as bob...
    as_alice = auditor.get(URL, {"q": TRAVEL, "userid": "alice", "reason": "ticket 42"})
    assert documents(as_alice) == ["travel.md"] and as_alice.json()["userid"] == "alice"
    assert documents(auditor.get(URL, {"q": TRAVEL, "userid": "bob", "reason": "t 43"})) == []
    # ...and every such search is in the access log: the knowledge base and each passage
    logged = AccessLog.objects.filter(username="auditor").order_by("pk")
    chunk = Chunk.objects.get()
    first = [(e.object_type, e.object_id) for e in logged if "ticket 42" in e.reason]
    assert first == [
        ("knowledge.knowledgebase", str(chunk.document.kb_id)),
        ("knowledge.chunk", str(chunk.pk)),
    ]
    assert all("employee alice" in e.reason and TRAVEL in e.reason for e in logged[:2])
    assert any("employee bob" in e.reason for e in logged)
    # The unfiltered view is logged as such
    assert documents(auditor.get(URL, {"q": TRAVEL, "reason": "audit"})) == ["travel.md"]
    assert AccessLog.objects.filter(reason__contains="all audiences").count() == 2


@pytest.mark.urls(__name__)
def test_employees_own_searches_need_no_reason_and_are_not_logged(
    finance_kb, django_user_model
) -> None:
    alice = client_for(django_user_model, "alice")
    assert documents(alice.get(URL, {"q": TRAVEL})) == ["travel.md"]
    assert documents(alice.get(URL, {"q": TRAVEL, "userid": "alice"})) == ["travel.md"]
    assert not AccessLog.objects.exists()


def test_kb_search_in_the_shell_is_access_logged(finance_kb) -> None:
    out = io.StringIO()
    call_command("kb_search", "finance", TRAVEL, "--user", "alice", "--reason", "INC-7", stdout=out)
    assert "travel.md" in out.getvalue()
    entry = AccessLog.objects.get(object_type="knowledge.knowledgebase")
    assert entry.user is None
    assert "manage.py kb_search" in entry.reason and "INC-7" in entry.reason
    assert "employee alice" in entry.reason


@pytest.mark.urls("wecom_ai.urls")
def test_passage_admin_needs_the_search_permission(finance_kb, client, django_user_model) -> None:
    # Given staff allowed to view passages, but without the search permission
    user = django_user_model.objects.create_user("viewer", password="unused", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_chunk"))
    client.force_login(user)
    changelist = reverse("admin:knowledge_chunk_changelist")
    # Then the passages of every audience stay closed to them
    assert client.get(changelist, {"q": "五百元"}).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="search_all_audiences"))
    client.force_login(django_user_model.objects.get(pk=user.pk))
    assert client.get(changelist, {"q": "五百元"}).status_code == 200


# --- item 3: group chats -----------------------------------------------------------------------


@pytest.fixture
def hr_knowledge(tmp_path: Path) -> list[int]:
    """An open handbook and an HR-only salary table; hr1 and hr2 are in HR, eng1 is not."""
    ingest(tmp_path, "handbook", "handbook.md", HANDBOOK)
    ingest(tmp_path, "salary", "salary.md", SALARY, "HR")
    directory_user_save(userid="hr1", departments=["HR"])
    directory_user_save(userid="hr2", departments=["HR"], tags=["payroll"])
    directory_user_save(userid="eng1", departments=["Engineering"])
    return list(KnowledgeBase.objects.values_list("pk", flat=True))


def hits_in_chat(bot, *, userid: str, chat_id: str = "") -> set[str]:
    """What the answer path retrieves for a turn in this chat (the real call site)."""
    chat_type = Conversation.ChatType.GROUP if chat_id else Conversation.ChatType.SINGLE
    conversation = Conversation.objects.create(
        bot=bot, chat_type=chat_type, chat_id=chat_id, userid=userid
    )
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=f"m-{conversation.pk}",
        stream_id=f"s-{conversation.pk}",
        question="工程师薪级表月薪多少",
        received_at=timezone.now(),
    )
    return {hit.document for hit in _knowledge_hits(turn=turn, question=turn.question) or []}


@pytest.fixture
def hr_bot(make_bot, hr_knowledge):
    bot = make_bot(retrieval_top_k=5)
    bot.knowledge_bases.set(hr_knowledge)
    return bot


def test_group_with_someone_outside_the_audience_gets_no_restricted_passages(hr_bot) -> None:
    # Given a registered group with an HR member and an engineer
    GroupChat.objects.create(chat_id="mixed", member_userids=["hr1", "eng1"])
    # When the HR member asks there, then the salary table is not used: eng1 reads the answer
    assert hits_in_chat(hr_bot, userid="hr1", chat_id="mixed") == {"handbook.md"}
    # while the same question in a 1:1 chat uses it
    assert "salary.md" in hits_in_chat(hr_bot, userid="hr1")


def test_group_of_members_all_in_the_audience_gets_restricted_passages(hr_bot) -> None:
    GroupChat.objects.create(chat_id="hr-team", member_userids=["hr1", "hr2"])
    assert "salary.md" in hits_in_chat(hr_bot, userid="hr1", chat_id="hr-team")


def test_unknown_membership_gets_only_knowledge_open_to_everyone(hr_bot) -> None:
    # An unregistered group, and one whose list lacks the asker (so it is stale)
    assert hits_in_chat(hr_bot, userid="hr1", chat_id="unregistered") == {"handbook.md"}
    GroupChat.objects.create(chat_id="stale", member_userids=["hr2"])
    assert hits_in_chat(hr_bot, userid="hr1", chat_id="stale") == {"handbook.md"}


def test_group_filter_follows_document_audiences_userids_tags_and_unknown_people(
    hr_knowledge,
) -> None:
    # Given the salary document restricted (on its own) to the payroll tag and the userid
    # "ghost", who is not in the directory
    Document.objects.filter(original_filename="salary.md").update(
        allowed_tags=["payroll"], allowed_userids=["ghost"]
    )

    def documents(*members: str) -> set[str]:
        hits = knowledge_retrieve(
            bot_kb_ids=hr_knowledge, readers=Readers.members(members), query="薪级表", top_k=5
        )
        return {hit.document for hit in hits}

    assert "salary.md" in documents("hr2", "ghost")  # a tag; a userid outside the directory
    assert "salary.md" not in documents("hr2", "hr1")  # hr1 is in HR, not payroll: the
    assert "salary.md" not in documents("ghost", "nobody")  # document's audience decides
    assert "salary.md" in documents("ghost")
    assert chat_readers(userid="hr1", chat_id="x", group=False) == Readers.employee("hr1")


@pytest.mark.urls("wecom_ai.urls")
def test_group_chat_members_are_registered_in_the_admin_with_an_audit_entry(admin_client) -> None:
    add = reverse("admin:directory_groupchat_add")
    data = {"chat_id": "wrkSFfCgAA", "name": "HR", "member_userids": " hr1, hr2,hr1 "}
    assert admin_client.post(add, data).status_code == 302
    assert GroupChat.objects.get(chat_id="wrkSFfCgAA").member_userids == ["hr1", "hr2"]
    entry = OperatorAuditEntry.objects.get(action="knowledge.groupchat.create")
    assert entry.after["member_userids"] == ["hr1", "hr2"]
    # An empty list would make the group look registered while admitting nobody's view
    page = admin_client.post(add, {**data, "chat_id": "other", "member_userids": " , "})
    assert page.status_code == 200 and not GroupChat.objects.filter(chat_id="other").exists()


@pytest.mark.urls("wecom_ai.urls")
def test_bot_admin_page_explains_the_group_chat_rule(admin_client, bot) -> None:
    page = admin_client.get(
        reverse("admin:bots_bot_change", args=[bot.pk]), HTTP_ACCEPT_LANGUAGE="en"
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="bot-group-knowledge-rule"' in text
    assert reverse("admin:directory_groupchat_changelist") in text
    assert "only from knowledge open to everyone" in text


# --- lower priority: ingestion bounded -------------------------------------------------------


def parse_error(path: Path) -> DocumentParseError:
    with pytest.raises(DocumentParseError) as caught:
        parse_document(path)
    return caught.value


def test_office_part_that_inflates_past_the_part_limit_is_refused(tmp_path: Path) -> None:
    # Given a real .docx carrying one extra part of 101 MB of zeros (about 100 KB zipped),
    # under the 512 MB total that was the only check
    good = tmp_path / "good.docx"
    document = docx.Document()
    document.add_paragraph("年假五天。")
    document.save(str(good))
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for item in source.infolist():
            out.writestr(item, source.read(item))
        with out.open("customXml/item9.xml", "w") as part:
            zeros = bytes(1024 * 1024)
            for _ in range(101):
                part.write(zeros)
    assert bomb.stat().st_size < 2 * 1024 * 1024
    # Then it is refused before any parser inflates it
    error = parse_error(bomb)
    assert error.code == "too_large" and "customXml/item9.xml" in error.message


def test_pdf_over_the_page_limit_is_refused_before_reading_pages(tmp_path: Path) -> None:
    writer = pypdf.PdfWriter()
    for _ in range(MAX_PAGES + 1):
        writer.add_blank_page(width=72, height=72)
    path = tmp_path / "long.pdf"
    with path.open("wb") as stream:
        writer.write(stream)
    error = parse_error(path)
    assert error.code == "too_large" and f"{MAX_PAGES:,}" in error.message


@pytest.mark.parametrize("name", ["many.md", "many.txt"])
def test_documents_over_the_paragraph_limit_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("段落。\n\n" * (MAX_PARAGRAPHS + 1), encoding="utf-8")
    assert parse_error(path).code == "too_large"


def _upload(tmp_path: Path, text: str) -> Document:
    kb, _ = knowledge_base_ensure(slug="bounded", actor=None)
    file = tmp_path / "bounded.md"
    file.write_text(text, encoding="utf-8")
    with file.open("rb") as stream:
        result = document_upload(
            kb=kb, content=File(stream), filename=file.name, actor=None, enqueue=False
        )
    return result.document


def test_documents_over_the_passage_limit_fail_readably(tmp_path: Path, settings) -> None:
    settings.KNOWLEDGE_MAX_CHUNKS = 2
    text = "".join(f"# 第{n}章\n\n第{n}章的内容。\n\n" for n in range(1, 5))
    document = ingest_service.document_ingest(document_id=_upload(tmp_path, text).pk)
    assert document.status == Document.Status.FAILED
    assert (
        document.error_code == "too_large" and "more than the 2 allowed" in document.error_message
    )
    assert not Chunk.objects.filter(document=document).exists()


def test_ingest_task_has_time_limits_and_a_timed_out_run_fails_the_document(
    tmp_path: Path, monkeypatch
) -> None:
    from django.conf import settings

    assert document_ingest_task.soft_time_limit == settings.KNOWLEDGE_INGEST_TIME_LIMIT_SECONDS
    assert document_ingest_task.time_limit > document_ingest_task.soft_time_limit
    document = _upload(tmp_path, "# 制度\n\n年假五天。")
    real_get_embedder = ingest_service.get_embedder

    class SlowEmbedder:
        """Celery raises SoftTimeLimitExceeded inside the task when the soft limit passes."""

        def __init__(self, spec):
            self._real = real_get_embedder(spec)

        def __getattr__(self, name):
            return getattr(self._real, name)

        def embed(self, texts):
            raise SoftTimeLimitExceeded

    monkeypatch.setattr(ingest_service, "get_embedder", SlowEmbedder)
    document = ingest_service.document_ingest(document_id=document.pk)
    assert document.status == Document.Status.FAILED
    assert document.error_code == "too_large" and "longer than" in document.error_message


@pytest.mark.slow  # a child Python process
def test_ingest_task_caps_its_process_memory(db) -> None:
    # In a child process (the cap would stay on the test process): the task sets
    # RLIMIT_DATA, and an allocation past it is a MemoryError, not the host's memory
    script = (
        "import django, resource; django.setup()\n"
        "from apps.knowledge.tasks import document_ingest\n"
        "document_ingest.run(0)\n"  # a vanished document: only the cap is applied
        "print(resource.getrlimit(resource.RLIMIT_DATA)[0] // (1024 * 1024))\n"
        "try:\n"
        "    block = bytearray(512 * 1024 * 1024)\n"
        "    print('allocated')\n"
        "except MemoryError:\n"
        "    print('refused')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BASE_DIR,
        env=worker_env(KNOWLEDGE_INGEST_MEMORY_LIMIT_MB="400"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["400", "refused"]


def test_ingest_runs_on_its_own_worker_in_the_runner_and_compose(tmp_path: Path) -> None:
    children = {child.name: child.command for child in runner._children(8000, tmp_path)}

    def queues_of(command: list[str]) -> set[str]:
        return set(command[command.index("-Q") + 1].split(","))

    assert queues_of(children["ingest"]) == {"ingest"}
    assert "ingest" not in queues_of(children["worker"])
    assert "archive" in queues_of(children["worker"])
    compose = _compose_commands((BASE_DIR / "docker-compose.yml").read_text())
    assert queues_of(compose["ingest"]) == {"ingest"}
    assert "ingest" not in queues_of(compose["worker"])


def _compose_commands(text: str) -> dict[str, list[str]]:
    """Each service's `command` list items (the compose file writes them one per line)."""
    commands: dict[str, list[str]] = {}
    service = None
    for line in text.splitlines():
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            service = line.strip()[:-1]
        elif service and line.startswith("      - "):
            commands.setdefault(service, []).append(line.strip()[2:].strip('"'))
    return commands

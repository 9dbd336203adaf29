"""The employee directory: by hand (`directory_user`) and synced from WeCom's contact API,
here a small fake WeCom server on loopback speaking the same URLs and errcodes."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command

from apps.directory.models import DirectoryUser
from apps.directory.services import contact_client_from_settings
from apps.knowledge.models import Document, KnowledgeBase
from apps.knowledge.selectors import document_visible_q

pytestmark = pytest.mark.django_db

CORP_ID, SECRET = "ww-test-corp", "contact-secret"
DEPARTMENTS = [
    {"id": 1, "name": "示例公司", "parentid": 0},
    {"id": 2, "name": "研发部", "parentid": 1},
    {"id": 3, "name": "后端组", "parentid": 2},
    {"id": 4, "name": "财务部", "parentid": 1},
]
MEMBERS = {
    1: [],
    2: [{"userid": "zhangsan", "name": "张三", "department": [2]}],
    3: [{"userid": "wangwu", "name": "王五", "department": [3, 4]}],
    4: [
        {"userid": "lisi", "name": "李四", "department": [4]},
        {"userid": "wangwu", "name": "王五", "department": [3, 4]},
    ],
}


class FakeWeCom(ThreadingHTTPServer):
    """gettoken / department/list / user/list with WeCom's errcodes for bad credentials."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeWeCom

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        self.server.requests.append(url.path)
        if url.path == "/cgi-bin/gettoken":
            if (query.get("corpid"), query.get("corpsecret")) != (CORP_ID, SECRET):
                return self._json({"errcode": 40001, "errmsg": "invalid credential"})
            self.server.tokens_issued += 1
            token = f"token-{self.server.tokens_issued}"
            self.server.valid_tokens.add(token)
            return self._json({"errcode": 0, "access_token": token, "expires_in": 7200})
        if query.get("access_token") not in self.server.valid_tokens:
            return self._json({"errcode": 42001, "errmsg": "access_token expired"})
        if url.path == "/cgi-bin/department/list":
            return self._json({"errcode": 0, "department": DEPARTMENTS})
        if url.path == "/cgi-bin/user/list":
            members = MEMBERS.get(int(query["department_id"]), [])
            return self._json({"errcode": 0, "userlist": members})
        self.send_error(404)

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def wecom(settings) -> Iterator[FakeWeCom]:
    server = FakeWeCom()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.WECOM_API_BASE = server.url
    settings.WECOM_CORP_ID = CORP_ID
    settings.WECOM_CONTACT_SECRET = SECRET
    yield server
    server.shutdown()
    server.server_close()


def test_sync_mirrors_wecom_with_parent_departments_and_renews_a_dead_token(wecom) -> None:
    # Given a cached token WeCom no longer accepts, a leaver, and hand-kept tags
    DirectoryUser.objects.create(userid="leaver", departments=["财务部"])
    DirectoryUser.objects.create(userid="lisi", name="旧名", tags=["经理"])
    client = contact_client_from_settings()
    cache.set(client._token_key, "token-expired-long-ago")
    client.close()
    out = io.StringIO()

    # When the directory is synced
    call_command("directory_sync", stdout=out)

    # Then the token was renewed once (42001 → gettoken → retry) and everyone is mirrored
    assert wecom.tokens_issued == 1
    assert wecom.requests[:3] == [
        "/cgi-bin/department/list", "/cgi-bin/gettoken", "/cgi-bin/department/list",
    ]  # fmt: skip
    assert "4 departments · 2 people added · 1 changed · 1 removed" in out.getvalue()
    users = {user.userid: user for user in DirectoryUser.objects.all()}
    assert set(users) == {"zhangsan", "wangwu", "lisi"}
    assert users["wangwu"].name == "王五"
    # each department with its id, then its parents up to the root
    backend_path = ["后端组", "3", "研发部", "2", "示例公司", "1"]
    assert users["wangwu"].departments == [*backend_path, "财务部", "4"]
    assert users["lisi"].name == "李四" and users["lisi"].tags == ["经理"]
    # A second sync reuses the cached token
    call_command("directory_sync", stdout=io.StringIO())
    assert wecom.tokens_issued == 1


def test_parent_department_audiences_admit_sub_department_members(wecom) -> None:
    call_command("directory_sync", stdout=io.StringIO())
    kb = KnowledgeBase.objects.create(name="研发", slug="rd", allowed_departments=["研发部"])
    Document.objects.create(kb=kb, original_filename="arch.md", file="x")

    def visible(userid: str) -> bool:
        return Document.objects.filter(document_visible_q(userid=userid)).exists()

    assert visible("wangwu")  # in 后端组, under 研发部
    assert visible("zhangsan")
    assert not visible("lisi")


def test_failed_sync_changes_nothing(wecom, settings) -> None:
    DirectoryUser.objects.create(userid="keep", departments=["财务部"])
    settings.WECOM_CONTACT_SECRET = "wrong"

    with pytest.raises(CommandError, match="40001"):
        call_command("directory_sync", stdout=io.StringIO())

    assert list(DirectoryUser.objects.values_list("userid", flat=True)) == ["keep"]


def test_directory_user_creates_then_updates() -> None:
    out = io.StringIO()
    call_command(
        "directory_user", "alice", "--name", "Alice", "--department", "财务部",
        "--department", "审计组", stdout=out,
    )  # fmt: skip
    assert "created Alice (alice) · 财务部, 审计组" in out.getvalue()
    call_command("directory_user", "alice", "--tag", "经理", stdout=io.StringIO())
    alice = DirectoryUser.objects.get(userid="alice")
    assert (alice.name, alice.departments, alice.tags) == ("Alice", ["财务部", "审计组"], ["经理"])

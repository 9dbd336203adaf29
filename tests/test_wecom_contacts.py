"""`wecom.contacts.ContactClient` on its own, without Django's cache: token reuse through the
cache it is given, renewal on WeCom's token errcodes, and clear errors for odd answers.

The server is a loopback stand-in of WeCom's gettoken and department/list URLs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from wecom.contacts import ContactClient, MemoryTokenCache, WeComApiError

CORP_ID, SECRET = "ww-corp", "contact-secret"


class StandIn(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.department_body: bytes | None = None  # None: the normal answer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if url.path == "/cgi-bin/gettoken":
            self.server.tokens_issued += 1
            token = f"token-{self.server.tokens_issued}"
            self.server.valid_tokens.add(token)
            return self._send(json.dumps({"errcode": 0, "access_token": token}).encode())
        if query.get("access_token") not in self.server.valid_tokens:
            return self._send(json.dumps({"errcode": 42001, "errmsg": "expired"}).encode())
        body = self.server.department_body
        if body is None:
            body = json.dumps({"errcode": 0, "department": [{"id": 1, "name": "总部"}]}).encode()
        return self._send(body)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _client(stand_in: StandIn, cache: MemoryTokenCache) -> ContactClient:
    return ContactClient(corp_id=CORP_ID, secret=SECRET, base_url=stand_in.url, token_cache=cache)


def test_clients_sharing_a_token_cache_ask_for_one_token(stand_in):
    # Given two clients over one token cache
    cache = MemoryTokenCache()
    first, second = _client(stand_in, cache), _client(stand_in, cache)
    # When both read the departments
    assert first.departments() == [{"id": 1, "name": "总部"}]
    assert second.departments() == [{"id": 1, "name": "总部"}]
    # Then WeCom was asked for a token once
    assert stand_in.tokens_issued == 1
    first.close()
    second.close()


def test_a_rejected_token_is_renewed_once(stand_in):
    # Given a cached token WeCom no longer accepts
    cache = MemoryTokenCache()
    client = _client(stand_in, cache)
    cache.set(client._token_key, "token-from-yesterday", timeout=60)
    # When the client reads the departments
    departments = client.departments()
    # Then it fetched a fresh token and the call went through
    assert departments == [{"id": 1, "name": "总部"}]
    assert stand_in.tokens_issued == 1
    assert cache.get(client._token_key) == "token-1"
    client.close()


def test_an_expired_cache_entry_is_not_returned():
    cache = MemoryTokenCache()
    cache.set("key", "value", timeout=0)
    assert cache.get("key") is None
    cache.set("key", "value", timeout=60)
    assert cache.get("key") == "value"


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[1, 2, 3]", b'"text"'])
def test_an_answer_that_is_not_a_json_object_is_a_wecom_api_error(stand_in, body):
    # Given WeCom (or a proxy in front of it) answering with something other than an object
    stand_in.department_body = body
    client = _client(stand_in, MemoryTokenCache())
    # When the client reads the departments, then the caller gets the error it handles
    with pytest.raises(WeComApiError) as raised:
        client.departments()
    assert raised.value.errcode == -1
    assert "/cgi-bin/department/list" in str(raised.value)
    client.close()


def test_missing_credentials_are_refused_before_any_request():
    with pytest.raises(WeComApiError, match="WECOM_CORP_ID"):
        ContactClient(corp_id="", secret=SECRET, base_url="http://127.0.0.1:9")

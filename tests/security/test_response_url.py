"""Issue 9, item 9 and its follow-ups: the response_url a message carries is attacker input.

The worker POSTs only over https to an allow-listed host at a public address (http to
loopback only in the test mode, for the simulator), follows no redirect, repeats nothing
the target said, and the URL, a bearer capability, is hidden, used once, then forgotten.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.contrib import admin
from django.test import RequestFactory
from django.utils import timezone

from apps.audit.models import AuditPolicy
from apps.audit.services.retention import retention_purge
from apps.bots.models import Conversation, Turn
from apps.bots.services import deliver
from apps.bots.streams import StreamState, stream_state_set
from wecom import outbound

pytestmark = pytest.mark.django_db(transaction=True)

PAYLOAD = {"msgtype": "markdown", "markdown": {"content": "完整答案"}}


def _turn(bot, url: str, *, minutes_old: float = 0, msgid: str = "m-1") -> Turn:
    conversation, _ = Conversation.objects.get_or_create(bot=bot, chat_type="single", userid="u1")
    turn = Turn.objects.create(
        bot=bot,
        conversation=conversation,
        msgid=msgid,
        stream_id=f"s-{msgid}",
        question="q",
        status=Turn.Status.GENERATING,
        received_at=timezone.now() - dt.timedelta(minutes=minutes_old),
        # Stored directly: a URL kept from before the check, or before the settings changed.
        response_url=url,
        # The stream is closed, so the whole answer goes through response_url.
        stream_closed_at=timezone.now(),
    )
    stream_state_set(turn.stream_id, StreamState(deadline=timezone.now().timestamp() + 300))
    return turn


def _finish(turn: Turn) -> Turn:
    deliver.turn_finish(turn=turn, reasoning="", answer="完整答案")
    turn.refresh_from_db()
    return turn


class _Target:
    """A loopback HTTP server answering every POST with one fixed response."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        answer = (status, body, headers or {})
        hits: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hits.append(self.path)
                status, body, headers = answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.hits = hits
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/cgi-bin/aibot/response?k=1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def target() -> Iterator[type[_Target]]:
    made: list[_Target] = []

    def make(*args, **kwargs) -> _Target:
        made.append(_Target(*args, **kwargs))
        return made[-1]

    yield make  # type: ignore[misc]
    for server in made:
        server.close()


# --- where the worker may POST -----------------------------------------------------------------


def test_host_off_the_allow_list_is_never_called(bot, response_server, settings):
    settings.WECOM_RESPONSE_URL_HOSTS = ["qyapi.weixin.qq.com"]
    turn = _finish(_turn(bot, response_server.url_for("m-1")))
    assert response_server.posts("m-1") == []
    assert "WECOM_RESPONSE_URL_HOSTS" in turn.error


def test_plain_http_is_refused_outside_the_loopback_test_mode(bot, response_server, settings):
    settings.WECOM_RESPONSE_URL_ALLOW_HTTP_LOOPBACK = False
    turn = _finish(_turn(bot, response_server.url_for("m-1")))
    assert response_server.posts("m-1") == []
    assert "https" in turn.error


def test_allowed_name_on_a_private_address_is_never_connected_to(bot, settings):
    # "localhost" stands in for an allow-listed name that resolves into the private network.
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    settings.WECOM_RESPONSE_URL_HOSTS = ["localhost"]
    settings.WECOM_RESPONSE_URL_ALLOW_HTTP_LOOPBACK = False
    try:
        turn = _finish(_turn(bot, f"https://localhost:{port}/cgi-bin/aibot/response?k=1"))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked
    finally:
        listener.close()
    assert "private" in turn.error


@pytest.mark.parametrize(
    "address", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "127.0.0.1", "::1",
                "fd00::1", "::ffff:10.0.0.1", "100.64.0.1", "0.0.0.0"],
)  # fmt: skip
def test_every_private_or_reserved_address_is_refused(address):
    policy = outbound.ResponseUrlPolicy.of(["qyapi.weixin.qq.com"])
    with pytest.raises(outbound.ResponseUrlRefused):
        outbound.post_response_url(
            "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=k",
            PAYLOAD,
            policy=policy,
            resolver=lambda host, port: ["101.91.22.56", address],  # one bad address is enough
        )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://qyapi.weixin.qq.com/x",
        "file:///etc/passwd",
        "https://user:pw@qyapi.weixin.qq.com/x",
        "https://qyapi.weixin.qq.com.evil.example/x",
        "https://evil.example/?qyapi.weixin.qq.com",
        "https://qyapi.weixin.qq.com\t.evil/x",
        "https://qyapi.weixin.qq.com:99999/x",
        "http://127.0.0.1:1/x",  # http to loopback, test mode off
        "not a url",
    ],
)
def test_only_https_to_an_allowed_host_passes_the_shape_check(url):
    with pytest.raises(outbound.ResponseUrlRefused):
        outbound.post_response_url(
            url, PAYLOAD, policy=outbound.ResponseUrlPolicy.of(["qyapi.weixin.qq.com"])
        )


def test_message_with_a_foreign_response_url_never_stores_it(bot, simulator_for):
    sim = simulator_for(bot)
    message = sim.text_message("年假怎么算", userid="u1")
    message["response_url"] = "http://169.254.169.254/latest/meta-data/iam"
    assert sim.post_message(message).status_code == 200
    assert Turn.objects.get().response_url == ""


def test_message_from_the_simulator_keeps_its_response_url(bot, simulator_for):
    sim = simulator_for(bot)
    assert sim.post_message(sim.text_message("年假怎么算", userid="u1")).status_code == 200
    assert Turn.objects.get().response_url.startswith("http://127.0.0.1:")


# --- what the worker does with the answer -------------------------------------------------------


def test_redirect_is_not_followed(bot, response_server, target):
    elsewhere = response_server.url_for("m-2")
    redirector = target(307, b"", {"Location": elsewhere})
    turn = _finish(_turn(bot, redirector.url))
    assert len(redirector.hits) == 1
    assert response_server.posts("m-2") == []
    assert "redirect" in turn.error


def test_target_error_text_is_never_reflected(bot, target):
    leak = "<script>internal: db=10.0.0.7 password=hunter2</script>"
    server = target(200, json.dumps({"errcode": 93000, "errmsg": leak}).encode())
    turn = _finish(_turn(bot, server.url))
    assert "93000" in turn.error
    assert "hunter2" not in turn.error and "script" not in turn.error


def test_target_answering_too_much_is_cut_off(bot, target):
    server = target(200, b"[" + b"0," * 200_000 + b"0]")
    with pytest.raises(outbound.ResponseUrlError, match="oversized"):
        outbound.post_response_url(server.url, PAYLOAD, policy=outbound.ResponseUrlPolicy.of(
            ["127.0.0.1"], allow_http_loopback=True))  # fmt: skip


# --- the capability is used once, then forgotten ------------------------------------------------


def test_response_url_is_cleared_once_used(bot, response_server):
    turn = _finish(_turn(bot, response_server.url_for("m-1")))
    assert len(response_server.posts("m-1")) == 1
    assert turn.response_url == "" and turn.response_url_used_at is not None


def test_expired_response_url_is_not_used_and_is_cleared(bot, response_server):
    turn = _finish(_turn(bot, response_server.url_for("m-1"), minutes_old=61))
    assert response_server.posts("m-1") == []
    assert turn.response_url == "" and "expired" in turn.error


def test_sweep_forgets_response_urls_past_their_hour(bot, response_server):
    old = _turn(bot, response_server.url_for("m-1"), minutes_old=61)
    fresh = _turn(bot, response_server.url_for("m-2"), msgid="m-2")
    Turn.objects.filter(pk__in=[old.pk, fresh.pk]).update(status=Turn.Status.ANSWERED)
    deliver.turns_sweep()
    old.refresh_from_db()
    fresh.refresh_from_db()
    assert old.response_url == ""
    assert fresh.response_url == response_server.url_for("m-2")


def test_retention_purges_response_urls(bot):
    AuditPolicy.objects.create(name="keep 1 day", retention_days=1).bots.add(bot)
    turn = _turn(bot, "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=k")
    Turn.objects.filter(pk=turn.pk).update(
        status=Turn.Status.ANSWERED,
        question="",
        answer="",  # nothing else left to purge: the URL alone makes the row expired
        received_at=timezone.now() - dt.timedelta(days=3),
    )
    retention_purge()
    turn.refresh_from_db()
    assert turn.response_url == ""


def test_admin_never_shows_the_response_url(bot, admin_user):
    turn = _turn(bot, "https://qyapi.weixin.qq.com/cgi-bin/aibot/response?response_code=k")
    request = RequestFactory().get("/")
    request.user = admin_user
    turn_admin = admin.site._registry[Turn]
    shown = [
        name
        for _title, options in turn_admin.get_fieldsets(request, turn)
        for name in options["fields"]
    ]
    assert "response_url" not in shown
    assert "response_url_used_at" in shown
    assert "response_url" not in turn_admin.get_form(request, turn).base_fields


# --- the pinned connection still checks the certificate against the name ------------------------


@pytest.fixture
def tls_target(monkeypatch) -> Iterator[tuple[int, list[dict], str]]:
    """An https server for the name "wecom.test" on loopback, whose certificate the client trusts.

    Loopback stands in for WeCom's public address (the only fault injected: `_is_public`
    accepts it), so the real TLS handshake checks the certificate against the name while
    the socket goes to the pinned address.
    """
    import ssl
    import tempfile

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wecom.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("wecom.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append({"host": self.headers["Host"], "path": self.path, "body": json.loads(body)})
            answer = b'{"errcode":0,"errmsg":"ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    with tempfile.TemporaryDirectory() as folder:
        cert_file, key_file = Path(folder, "cert.pem"), Path(folder, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert_file, key_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(outbound, "_is_public", lambda address: True)
    try:
        yield server.server_address[1], seen, cert_pem.decode()
    finally:
        server.shutdown()
        server.server_close()


def test_pinned_https_checks_the_certificate_against_the_name(tls_target):
    import ssl

    import httpx

    port, seen, cert_pem = tls_target
    trusting = httpx.Client(verify=ssl.create_default_context(cadata=cert_pem), trust_env=False)
    loopback = lambda host, port: ["127.0.0.1"]  # noqa: E731
    with trusting:
        answer = outbound.post_response_url(
            f"https://wecom.test:{port}/cgi-bin/aibot/response?response_code=k",
            PAYLOAD,
            policy=outbound.ResponseUrlPolicy.of(["wecom.test"]),
            client=trusting,
            resolver=loopback,
        )
        assert answer == {"errcode": 0, "errmsg": "ok"}
        assert seen == [
            {
                "host": f"wecom.test:{port}",
                "path": "/cgi-bin/aibot/response?response_code=k",
                "body": PAYLOAD,
            }
        ]
        # Another allowed name pointing at the same address: its certificate does not match.
        with pytest.raises(outbound.ResponseUrlError, match="request failed"):
            outbound.post_response_url(
                f"https://other.test:{port}/cgi-bin/aibot/response?response_code=k",
                PAYLOAD,
                policy=outbound.ResponseUrlPolicy.of(["other.test"]),
                client=trusting,
                resolver=loopback,
            )
    assert len(seen) == 1

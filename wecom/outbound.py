"""Outbound calls to WeCom made outside a callback: the AI bot's one-shot response_url (101138).

The response_url arrives inside the callback, so it is attacker-shaped input: the worker
only POSTs to an https URL on an allow-listed host, resolved once, checked against private
ranges and then connected to by that address (no second lookup a DNS rebinding could
change), without following redirects, and it never repeats what the target answered.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx

# Every outbound base URL is configurable so tests can point it at the loopback simulator.
DEFAULT_API_BASE = "https://qyapi.weixin.qq.com"
# WeCom's API host, the only one a production response_url may name.
DEFAULT_RESPONSE_URL_HOSTS = ("qyapi.weixin.qq.com",)
# WeCom answers with a small JSON object; a target that sends more is not WeCom.
MAX_ANSWER_BYTES = 64 * 1024

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]


class ResponseUrlError(Exception):
    """A response_url POST failed: transport error, HTTP error or a non-zero errcode.

    `errcode` is WeCom's code when it answered with one, else None. Neither the URL (a
    single-use credential) nor anything the target wrote is part of the message.
    """

    def __init__(self, message: str, *, errcode: int | None = None) -> None:
        super().__init__(message)
        self.errcode = errcode


class ResponseUrlRefused(ResponseUrlError):
    """The response_url is not one the bot may call (scheme, host, address); nothing was sent."""


@dataclass(frozen=True, slots=True)
class ResponseUrlPolicy:
    """Where a response_url may point.

    `hosts` are exact host names (lower case). `allow_http_loopback` lets tests use the
    loopback simulator over plain http; it accepts http only to a loopback address.
    """

    hosts: frozenset[str] = frozenset(DEFAULT_RESPONSE_URL_HOSTS)
    allow_http_loopback: bool = False

    @classmethod
    def of(cls, hosts: Iterable[str], *, allow_http_loopback: bool = False) -> ResponseUrlPolicy:
        return cls(
            hosts=frozenset(h.strip().lower().rstrip(".") for h in hosts if h.strip()),
            allow_http_loopback=allow_http_loopback,
        )


@dataclass(frozen=True, slots=True)
class ResponseUrlTarget:
    """A response_url that passed the shape check, with its host and effective port."""

    parts: SplitResult
    host: str
    port: int


def _literal_ip(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def response_url_check(url: str, policy: ResponseUrlPolicy) -> ResponseUrlTarget:
    """Check a response_url's shape without any network access; raise ResponseUrlRefused.

    Cheap enough for the callback path, so a URL that can never be used is not even stored.
    """
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise ResponseUrlRefused("response_url contains control characters or spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ResponseUrlRefused("response_url is not a valid URL") from None
    host = (parts.hostname or "").rstrip(".")
    if parts.username is not None or parts.password is not None or not host:
        raise ResponseUrlRefused("response_url must name a host and no credentials")
    if host not in policy.hosts:
        raise ResponseUrlRefused("response_url host is not in WECOM_RESPONSE_URL_HOSTS")
    if parts.scheme == "https":
        return ResponseUrlTarget(parts=parts, host=host, port=port or 443)
    literal = _literal_ip(host)
    if (
        parts.scheme == "http"
        and policy.allow_http_loopback
        and literal is not None
        and literal.is_loopback
    ):
        return ResponseUrlTarget(parts=parts, host=host, port=port or 80)
    raise ResponseUrlRefused("response_url must use https")


def _system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _pinned_address(
    target: ResponseUrlTarget, policy: ResponseUrlPolicy, resolver: Resolver
) -> IpAddress:
    """The one address to connect to: every address the name has must be public.

    Only the loopback test mode may reach a loopback address, and only an http one.
    """
    literal = _literal_ip(target.host)
    if literal is not None:
        addresses: list[IpAddress] = [literal]
    else:
        try:
            resolved = list(resolver(target.host, target.port))
        except OSError:
            raise ResponseUrlError("response_url host does not resolve") from None
        addresses = [a for a in (_literal_ip(r.split("%", 1)[0]) for r in resolved) if a]
        if not addresses:
            raise ResponseUrlError("response_url host does not resolve")
    loopback_ok = policy.allow_http_loopback and target.parts.scheme == "http"
    for address in addresses:
        if not (_is_public(address) or (loopback_ok and address.is_loopback)):
            raise ResponseUrlRefused("response_url host resolves to a private or reserved address")
    return addresses[0]


def _read_json(response: httpx.Response) -> Any:
    data = bytearray()
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            raise ResponseUrlError("response_url answered with an oversized body")
    try:
        return json.loads(bytes(data))
    except ValueError:
        raise ResponseUrlError("response_url answered with a non-JSON body") from None


def post_response_url(
    url: str,
    payload: dict[str, Any],
    *,
    policy: ResponseUrlPolicy,
    timeout: float = 10.0,
    client: httpx.Client | None = None,
    resolver: Resolver = _system_resolver,
) -> dict[str, Any]:
    """POST payload as JSON to a response_url and return WeCom's JSON answer.

    A response_url works once, so callers must not retry blindly after a success-looking
    transport error; the raised ResponseUrlError says which kind of failure happened (a
    ResponseUrlRefused means nothing left this machine).
    """
    target = response_url_check(url, policy)
    address = _pinned_address(target, policy, resolver)
    netloc = f"[{address}]" if address.version == 6 else str(address)
    pinned = urlunsplit(target.parts._replace(netloc=f"{netloc}:{target.port}"))
    host_header = target.parts.netloc.rsplit("@", 1)[-1]
    request_options: dict[str, Any] = {
        "json": payload,
        "headers": {"Host": host_header},
        # The certificate is checked against the name, while the socket goes to the address
        # that was checked above.
        "extensions": {"sni_hostname": target.host},
        "follow_redirects": False,
        "timeout": timeout,
    }
    try:
        if client is None:
            # trust_env=False: through a proxy from the environment the socket would not go
            # to the checked address, and the certificate would be checked against an IP.
            with httpx.Client(
                timeout=timeout, follow_redirects=False, trust_env=False
            ) as own_client:
                body = _post(own_client, pinned, request_options)
        else:
            body = _post(client, pinned, request_options)
    except httpx.HTTPError as exc:
        raise ResponseUrlError(f"response_url request failed: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise ResponseUrlError("response_url answered with a JSON value that is not an object")
    errcode = body.get("errcode", 0)
    if errcode != 0:
        code = errcode if isinstance(errcode, int) and not isinstance(errcode, bool) else None
        # errmsg is the target's text: recorded nowhere, only the numeric code is kept.
        shown = code if code is not None else "not a number"
        raise ResponseUrlError(f"response_url rejected the message: errcode={shown}", errcode=code)
    return body


def _post(client: httpx.Client, url: str, options: dict[str, Any]) -> Any:
    with client.stream("POST", url, **options) as response:
        if response.is_redirect:
            raise ResponseUrlError(
                f"response_url answered with a redirect (HTTP {response.status_code}), not followed"
            )
        if response.status_code != httpx.codes.OK:
            raise ResponseUrlError(f"response_url answered HTTP {response.status_code}")
        return _read_json(response)

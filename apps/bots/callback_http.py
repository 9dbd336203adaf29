"""The HTTP edge every platform callback shares (AI bot, self-built app, Official Account).

Refusals carry short fixed bodies, so a caller learns nothing from them beyond the status;
the signed timestamp must be recent, so a captured callback cannot be played again later;
a body over `WECOM_CALLBACK_MAX_BYTES` is refused, counted on what is read, whatever the
declared length says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from wecom.crypto import SignatureError, WeComCrypto, WeComCryptoError

logger = logging.getLogger(__name__)


def plain(status: int, body: str) -> HttpResponse:
    return HttpResponse(body, status=status, content_type="text/plain; charset=utf-8")


def bad_request() -> HttpResponse:
    return plain(400, "invalid request")


def forbidden() -> HttpResponse:
    return plain(403, "forbidden")


def not_found() -> HttpResponse:
    return plain(404, "not found")


def method_not_allowed() -> HttpResponse:
    response = plain(405, "method not allowed")
    response["Allow"] = "GET, POST"
    return response


def payload_too_large() -> HttpResponse:
    return plain(413, "payload too large")


def timestamp_fresh(timestamp: str) -> bool:
    """The platform signs the timestamp: one far from now is a captured callback replayed."""
    if not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs(time.time() - int(timestamp)) <= settings.WECOM_CALLBACK_MAX_SKEW_SECONDS


def body_read(request: HttpRequest, *, who: str) -> bytes | None:
    """The body, or None when it is over the limit (declared or actually sent)."""
    limit = settings.WECOM_CALLBACK_MAX_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        logger.warning("%s: callback body of %s bytes refused", who, declared)
        return None
    body = request.read(limit + 1)
    if len(body) > limit:
        logger.warning("%s: callback body over %s bytes refused", who, limit)
        return None
    return body


def url_verify(
    request: HttpRequest,
    crypto: WeComCrypto,
    params: dict[str, str],
    *,
    who: str,
    verified: Callable[[], None],
) -> HttpResponse:
    """WeCom's GET check of a callback URL: the decrypted echostr back, `verified()` first."""
    echostr = request.GET.get("echostr", "")
    if not echostr:
        return bad_request()
    try:
        echo = crypto.verify_url(echostr=echostr, **params)
    except SignatureError:
        logger.warning("%s: URL verification with a bad signature", who)
        return forbidden()
    except WeComCryptoError:
        logger.warning("%s: URL verification echostr does not decrypt", who)
        return bad_request()
    verified()
    return HttpResponse(echo, content_type="text/plain; charset=utf-8")

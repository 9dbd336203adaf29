"""The WeCom AI-bot callback endpoint: verify, decrypt, hand to a service, reply encrypted.

Every rejection is logged with the request id and answered with a short fixed body: a bad
signature, a stale timestamp or a reused nonce is 403 (nothing decrypted for the first
two), anything undecryptable or malformed is one indistinguishable 400, an oversized body
413 (refused before it is read, by `wecom_ai.body_limit`), an unknown or disabled bot 404.

The view is async and runs its (sync, database-bound) work on the event loop's thread pool:
as a sync view under ASGI each ack got a new thread and so a new database connection, and a
burst of callbacks ran out of PostgreSQL's connections (README, "Web tier").
"""

from __future__ import annotations

import logging
from datetime import datetime

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from apps.bots import callback_http as http
from apps.bots.models import Bot
from apps.bots.services import receive
from apps.core.fields import is_undecryptable
from wecom.crypto import SignatureError, WeComCrypto, WeComCryptoError
from wecom.messages import MalformedMessage, parse_callback

logger = logging.getLogger(__name__)

_QUERY_PARAMS = ("msg_signature", "timestamp", "nonce")


@csrf_exempt
async def callback(request: HttpRequest, slug: str) -> HttpResponse:
    return await _callback_in_pool(request, slug)


@csrf_exempt
def callback_sync(request: HttpRequest, slug: str) -> HttpResponse:
    """The whole callback; the async view runs it on a pool thread."""
    received_at = timezone.now()
    if request.method not in {"GET", "POST"}:
        return http.method_not_allowed()
    bot = (
        Bot.objects.select_related("model_profile")
        .filter(slug=slug, enabled=True, connection_mode=Bot.ConnectionMode.CALLBACK)
        .first()
    )
    if bot is None:
        # A bot on the long connection has its callback URL switched off (one door only).
        logger.info("callback for unknown, disabled or long-connection bot %r", slug)
        return http.not_found()
    params = {name: request.GET.get(name, "") for name in _QUERY_PARAMS}
    if not all(params.values()):
        logger.info("bot %s: callback without %s", slug, ", ".join(_QUERY_PARAMS))
        return http.bad_request()
    if is_undecryptable(bot.token) or is_undecryptable(bot.encoding_aes_key):
        logger.error("bot %s: stored credentials do not decrypt; check FIELD_ENCRYPTION_KEYS", slug)
        return http.plain(503, "bot misconfigured")
    try:
        crypto = WeComCrypto(token=bot.token, encoding_aes_key=bot.encoding_aes_key)
    except ValueError:
        logger.error("bot %s has an invalid EncodingAESKey; fix it in the admin", slug)
        return http.plain(503, "bot misconfigured")
    if request.method == "GET":
        return http.url_verify(
            request, crypto, params, who=f"bot {slug}", verified=bot.url_verified_record
        )
    return _receive(request, bot, crypto, params, received_at)


# Not thread-sensitive: several acks run at once on the pool's few threads; each call
# checks its thread's connection out and back (Channels' close_old_connections: returned
# to the web's connection pool, or closed when stale or broken).
_callback_in_pool = database_sync_to_async(callback_sync, thread_sensitive=False)


def _receive(
    request: HttpRequest,
    bot: Bot,
    crypto: WeComCrypto,
    params: dict[str, str],
    received_at: datetime,
) -> HttpResponse:
    if not http.timestamp_fresh(params["timestamp"]):
        logger.warning("bot %s: callback with a stale or invalid timestamp refused", bot.slug)
        return http.forbidden()
    body = http.body_read(request, who=f"bot {bot.slug}")
    if body is None:
        return http.payload_too_large()
    try:
        data = crypto.decrypt_callback(body=body, **params)
    except SignatureError:
        logger.warning("bot %s: callback with a bad signature", bot.slug)
        return http.forbidden()
    except WeComCryptoError:
        logger.warning("bot %s: callback body does not decrypt", bot.slug)
        return http.bad_request()
    try:
        message = parse_callback(data)
    except MalformedMessage as exc:
        logger.warning("bot %s: malformed callback: %s", bot.slug, exc)
        return http.bad_request()
    if bot.aibotid and message.aibotid and message.aibotid != bot.aibotid:
        logger.warning("bot %s: callback for aibotid %r refused", bot.slug, message.aibotid)
        return http.bad_request()
    if not receive.callback_nonce_remember(
        bot=bot, timestamp=params["timestamp"], nonce=params["nonce"], msgid=message.msgid
    ):
        logger.warning("bot %s: callback reusing a (timestamp, nonce) pair refused", bot.slug)
        return http.forbidden()
    try:
        payload = receive.callback_handle(bot=bot, callback=message, received_at=received_at)
    except Exception:
        # WeCom retries a failed delivery, and the msgid dedup makes the retry safe.
        logger.exception("bot %s: callback could not be handled", bot.slug)
        return http.plain(503, "temporarily unavailable")
    if payload is None:
        return HttpResponse(b"", content_type="text/plain")
    reply = crypto.encrypt_reply(payload, nonce=params["nonce"])
    return JsonResponse(reply, json_dumps_params={"ensure_ascii": False, "separators": (",", ":")})

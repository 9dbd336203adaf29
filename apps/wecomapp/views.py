"""The self-built app's callback endpoint: verify, decrypt the XML, record, answer empty.

Refusals match the AI-bot callback's (`apps.bots.views`): a bad signature, a stale
timestamp or a reused nonce is 403, anything undecryptable or malformed (a wrong
receiveid included) one indistinguishable 400, an oversized body 413, an unknown or
disabled app 404. Nothing is stored for a refused callback.
"""

from __future__ import annotations

import logging
from datetime import datetime

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from apps.bots import callback_http as http
from apps.core.fields import is_undecryptable
from apps.wecomapp.kf import kf_event_receive
from apps.wecomapp.models import WeComApp
from apps.wecomapp.services import app_callback_receive, app_nonce_remember
from wecom.app import callback_decrypt, callback_parse
from wecom.crypto import SignatureError, WeComCrypto, WeComCryptoError
from wecom.messages import MalformedMessage

logger = logging.getLogger(__name__)

_QUERY_PARAMS = ("msg_signature", "timestamp", "nonce")


@csrf_exempt
async def callback(request: HttpRequest, slug: str) -> HttpResponse:
    return await _callback_in_pool(request, slug)


def callback_sync(request: HttpRequest, slug: str) -> HttpResponse:
    """The whole callback; the async view runs it on a pool thread (README, "Web tier")."""
    received_at = timezone.now()
    if request.method not in {"GET", "POST"}:
        return http.method_not_allowed()
    app = WeComApp.objects.select_related("bot").filter(slug=slug, enabled=True).first()
    if app is None:
        logger.info("app callback for unknown or disabled app %r", slug)
        return http.not_found()
    params = {name: request.GET.get(name, "") for name in _QUERY_PARAMS}
    if not all(params.values()):
        logger.info("app %s: callback without %s", slug, ", ".join(_QUERY_PARAMS))
        return http.bad_request()
    if is_undecryptable(app.token) or is_undecryptable(app.encoding_aes_key):
        logger.error("app %s: stored credentials do not decrypt; check FIELD_ENCRYPTION_KEYS", slug)
        return http.plain(503, "app misconfigured")
    try:
        # receiveid = the CorpID for apps (the AI bot's is empty).
        crypto = WeComCrypto(
            token=app.token, encoding_aes_key=app.encoding_aes_key, receive_id=app.corp_id
        )
    except ValueError:
        logger.error("app %s has no Token or an invalid EncodingAESKey; fix it in the admin", slug)
        return http.plain(503, "app misconfigured")
    if request.method == "GET":
        return http.url_verify(
            request, crypto, params, who=f"app {slug}", verified=app.url_verified_record
        )
    return _receive(request, app, crypto, params, received_at)


def _receive(
    request: HttpRequest,
    app: WeComApp,
    crypto: WeComCrypto,
    params: dict[str, str],
    received_at: datetime,
) -> HttpResponse:
    if not http.timestamp_fresh(params["timestamp"]):
        logger.warning("app %s: callback with a stale or invalid timestamp refused", app.slug)
        return http.forbidden()
    body = http.body_read(request, who=f"app {app.slug}")
    if body is None:
        return http.payload_too_large()
    try:
        data = callback_decrypt(crypto, body=body, **params)
    except SignatureError:
        logger.warning("app %s: callback with a bad signature", app.slug)
        return http.forbidden()
    except WeComCryptoError:
        logger.warning("app %s: callback body does not decrypt", app.slug)
        return http.bad_request()
    try:
        message = callback_parse(data)
    except MalformedMessage as exc:
        logger.warning("app %s: malformed callback: %s", app.slug, exc)
        return http.bad_request()
    if message.agent_id and message.agent_id != str(app.agent_id):
        logger.warning("app %s: callback for agent %r refused", app.slug, message.agent_id)
        return http.bad_request()
    if not app_nonce_remember(
        app=app, timestamp=params["timestamp"], nonce=params["nonce"], key=message.dedup_key
    ):
        logger.warning("app %s: callback reusing a (timestamp, nonce) pair refused", app.slug)
        return http.forbidden()
    try:
        if message.kf_token:
            kf_event_receive(app=app, open_kfid=message.open_kfid, token=message.kf_token)
        else:
            app_callback_receive(app=app, callback=message, received_at=received_at)
    except Exception:
        # WeCom retries a failed delivery, and the MsgId dedup makes the retry safe.
        logger.exception("app %s: callback could not be handled", app.slug)
        return http.plain(503, "temporarily unavailable")
    # Acknowledged empty at once: the answer goes out through message/send.
    return HttpResponse(b"", content_type="text/plain")


# Not thread-sensitive: acks run side by side on the pool's threads (as the AI-bot callback).
_callback_in_pool = database_sync_to_async(callback_sync, thread_sensitive=False)

"""The Official Account callback: verify, decrypt, turn the message into a turn, reply.

Async on purpose: the callback waits up to `WECHAT_PASSIVE_REPLY_SECONDS` for the answer, and
under ASGI a sync view would hold a thread for all that time; here the wait is an
`asyncio.sleep` between short database reads. Refusals are answered like the WeCom callback's:
a bad signature or a stale or reused (timestamp, nonce) 403 with nothing stored, anything
undecryptable or malformed one indistinguishable 400, an unknown or disabled account 404.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from apps.bots import callback_http as http
from apps.bots.models import Turn
from apps.core.fields import is_undecryptable
from apps.wechat.models import OfficialAccount
from apps.wechat.services import official_account as service
from wecom import mp

logger = logging.getLogger(__name__)

T = TypeVar("T")

_POLL_SECONDS = 0.2


def _in_pool(function: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """Database work on the event loop's thread pool, sharing its threads' connections:
    thread-sensitive calls would give each request a thread, and a connection, of its own
    (README, "Web tier")."""
    return database_sync_to_async(function, thread_sensitive=False)


def _success() -> HttpResponse:
    """WeChat's "nothing to say now" (an empty body works too, "success" is documented)."""
    return http.plain(200, "success")


def _xml(body: str) -> HttpResponse:
    return HttpResponse(body, content_type="application/xml; charset=utf-8")


def _nonce_remember(*, account: OfficialAccount, params: dict[str, str], msgid: str) -> bool:
    """False when a signed (timestamp, nonce) pair comes back carrying another message."""
    key = f"wechat-nonce:{account.pk}:{params['timestamp']}:{params['nonce']}"
    if cache.add(key, msgid, timeout=2 * settings.WECOM_CALLBACK_MAX_SKEW_SECONDS):
        return True
    return bool(cache.get(key) == msgid)


def _account_get(slug: str) -> OfficialAccount | None:
    return OfficialAccount.objects.select_related("bot").filter(slug=slug, enabled=True).first()


def _codec(account: OfficialAccount) -> mp.MpCallbackCodec | None:
    if is_undecryptable(account.token) or is_undecryptable(account.encoding_aes_key):
        logger.error("account %s: stored credentials do not decrypt", account.slug)
        return None
    try:
        return mp.MpCallbackCodec(
            token=account.token,
            encoding_aes_key=account.encoding_aes_key,
            app_id=account.app_id,
            mode=account.mode,
        )
    except ValueError:
        logger.error(
            "account %s: invalid EncodingAESKey or mode; fix it in the admin", account.slug
        )
        return None


@csrf_exempt
async def mp_callback(request: HttpRequest, slug: str) -> HttpResponse:
    received_at = timezone.now()
    if request.method not in {"GET", "POST"}:
        return http.method_not_allowed()
    account = await _in_pool(_account_get)(slug)
    if account is None:
        return http.not_found()
    codec = _codec(account)
    if codec is None:
        return http.plain(503, "account misconfigured")
    params = {
        name: request.GET.get(name, "")
        for name in ("signature", "timestamp", "nonce", "encrypt_type", "msg_signature")
    }
    if not (params["signature"] and params["timestamp"] and params["nonce"]):
        return http.bad_request()
    if request.method == "GET":
        try:
            echo = codec.verify_url(echostr=request.GET.get("echostr", ""), **{
                key: params[key] for key in ("signature", "timestamp", "nonce")
            })  # fmt: skip
        except mp.MpSignatureError:
            logger.warning("account %s: URL verification with a bad signature", slug)
            return http.forbidden()
        return http.plain(200, echo)
    if not http.timestamp_fresh(params["timestamp"]):
        logger.warning("account %s: callback with a stale or invalid timestamp refused", slug)
        return http.forbidden()
    body = http.body_read(request, who=f"account {slug}")
    if body is None:
        return http.payload_too_large()
    try:
        inbound = codec.open(body=body, params=params)
    except mp.MpSignatureError:
        logger.warning("account %s: callback with a bad signature", slug)
        return http.forbidden()
    except mp.MpMessageError as exc:
        logger.warning("account %s: callback refused: %s", slug, exc)
        return http.bad_request()
    if not await _in_pool(_nonce_remember)(account=account, params=params, msgid=inbound.msgid):
        logger.warning("account %s: callback reusing a (timestamp, nonce) pair refused", slug)
        return http.forbidden()
    try:
        return await _answer(account, codec, inbound, params, received_at)
    except Exception:
        # WeChat retries, and the MsgId dedup makes the retry safe.
        logger.exception("account %s: callback could not be handled", slug)
        return http.plain(503, "temporarily unavailable")


async def _answer(
    account: OfficialAccount,
    codec: mp.MpCallbackCodec,
    inbound: mp.MpInbound,
    params: dict[str, str],
    received_at: datetime,
) -> HttpResponse:
    def reply(text: str) -> HttpResponse:
        return _xml(
            codec.text_reply(
                inbound=inbound,
                content=text,
                nonce=params["nonce"],
                timestamp=str(int(time.time())),
            )
        )

    if inbound.msgtype == "event":
        # A follower who subscribed by scanning a QR code arrives as "subscribe_scan".
        subscribed = inbound.event in {"subscribe", "subscribe_scan"}
        if subscribed and service.welcome_text(account=account):
            return reply(service.welcome_text(account=account))
        return _success()
    turn = await _in_pool(service.follower_message_receive)(
        account=account, inbound=inbound, received_at=received_at
    )
    seconds = settings.WECHAT_PASSIVE_REPLY_SECONDS
    deadline = time.monotonic() + seconds
    await _in_pool(service.passive_wait_begin)(turn_id=turn.pk, seconds=seconds)
    try:
        while True:
            done, text = await _in_pool(_passive_poll)(turn.pk)
            if text is not None:
                return reply(text)
            if done or time.monotonic() + _POLL_SECONDS > deadline:
                return _success()
            await asyncio.sleep(_POLL_SECONDS)
    finally:
        await _in_pool(service.passive_wait_end)(turn_id=turn.pk)


def _passive_poll(turn_id: int) -> tuple[bool, str | None]:
    turn = Turn.objects.get(pk=turn_id)
    return service.passive_reply_take(turn=turn)

"""微信客服: customers outside the company asking the bot, and handing them to a person.

The callback's event only announces messages; `kf_messages_sync` pulls them from the
account's durable cursor and records each customer question as an external turn (answered
only from knowledge open to external users) in the same transaction that moves the cursor.
A crash before that commit pulls the same messages again, one after it never pulls them
twice, and the answer itself leaves through the push outbox, which sends it once. A
customer asking for a person, or a question the bot cannot answer, moves the session to
WeCom's queue for people (`service_state/trans`); the bot then stays silent until the
person ends the session.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from apps.bots.models import Turn
from apps.bots.services.push import PushError
from apps.bots.services.receive import mention_receive
from apps.wecomapp.models import AppDelivery, KfCursor, KfSession, WeComApp
from apps.wecomapp.services import app_client, app_turn_text
from wecom.app import AppApiError, AppClient, message_parts
from wecom.kf import (
    ORIGIN_CUSTOMER,
    ORIGIN_SYSTEM,
    STATE_CHANGE_REFUSED,
    STATE_POOL,
    TEXT_MAX_BYTES,
    KfMessage,
    asks_for_human,
    kf_send_text,
    kf_state_trans,
    kf_sync,
)
from wecom.messages import InboundMessage

logger = logging.getLogger(__name__)

MSGID_PREFIX = "kf:"
# session_status_change: 1 taken from the pool, 2 transferred, 3 ended, 4 reopened by a person.
_PERSON_CHANGES = frozenset({1, 2, 4})
_SESSION_ENDED = 3


def kf_event_receive(*, app: WeComApp, open_kfid: str, token: str) -> None:
    """Pull what the event announced, in a worker (WeCom wants its answer within 5 s)."""
    from apps.wecomapp.tasks import kf_sync as kf_sync_task

    app_id = app.pk
    transaction.on_commit(lambda: kf_sync_task.delay(app_id, open_kfid, token))


def kf_messages_sync(*, app: WeComApp, open_kfid: str, token: str = "") -> int:
    """Record every message after the account's cursor; returns the number of new turns.

    The cursor row is locked for the whole page, so two events handled at once pull one
    after the other instead of recording the same page twice.
    """
    KfCursor.objects.get_or_create(app=app, open_kfid=open_kfid)
    client = app_client(app=app)
    recorded = 0
    try:
        while True:
            with transaction.atomic():
                row = KfCursor.objects.select_for_update().get(app=app, open_kfid=open_kfid)
                page = kf_sync(client, open_kfid=open_kfid, cursor=row.cursor, token=token)
                now = timezone.now()
                for message in page.messages:
                    recorded += kf_message_record(
                        app=app, client=client, message=message, received_at=now
                    )
                row.cursor, row.synced_at = page.next_cursor, now
                row.save(update_fields=["cursor", "synced_at"])
            if not page.has_more:
                return recorded
    finally:
        client.close()


def kf_message_record(
    *, app: WeComApp, client: AppClient, message: KfMessage, received_at: datetime
) -> int:
    """One pulled message: a question becomes a turn (1), anything else changes state (0)."""
    if message.origin == ORIGIN_SYSTEM and message.event.get("event_type") == (
        "session_status_change"
    ):
        _session_change(app=app, message=message)
        return 0
    if message.origin != ORIGIN_CUSTOMER or not message.external_userid:
        return 0  # a person's own replies, other events
    session, _created = KfSession.objects.get_or_create(
        app=app, open_kfid=message.open_kfid, external_userid=message.external_userid
    )
    if session.handled_by == KfSession.HandledBy.HUMAN:
        return 0  # a person answers this customer now
    if message.text is not None and asks_for_human(message.text):
        kf_handover(client=client, session=session)
        return 0
    inbound = InboundMessage(
        msgid=f"{MSGID_PREFIX}{message.msgid}",
        aibotid="",
        chatid=None,
        chattype="single",
        userid=message.external_userid,
        response_url=None,
        msgtype=message.msgtype,
        text=message.text,
        image_urls=(),
        quote=None,
        raw=message.raw,
    )
    turn = mention_receive(
        bot=app.bot,
        message=inbound,
        received_at=received_at,
        channel=Turn.Channel.KF,
        external=True,
    )
    AppDelivery.objects.get_or_create(
        turn=turn,
        defaults={"app": app, "touser": message.external_userid, "open_kfid": message.open_kfid},
    )
    return 1


def _session_change(*, app: WeComApp, message: KfMessage) -> None:
    change = int(message.event.get("change_type") or 0)
    userid = str(message.event.get("external_userid") or message.external_userid)
    if not userid or (change not in _PERSON_CHANGES and change != _SESSION_ENDED):
        return
    handled_by = KfSession.HandledBy.BOT if change == _SESSION_ENDED else KfSession.HandledBy.HUMAN
    KfSession.objects.update_or_create(
        app=app,
        open_kfid=message.open_kfid,
        external_userid=userid,
        defaults={"handled_by": handled_by},
    )


def kf_handover(*, client: AppClient, session: KfSession) -> bool:
    """Queue the customer for a person; True once the session is a person's.

    A refused state change (the session already left the bot) counts as handed over.
    """
    try:
        kf_state_trans(
            client,
            open_kfid=session.open_kfid,
            external_userid=session.external_userid,
            service_state=STATE_POOL,
        )
    except AppApiError as exc:
        if exc.errcode != STATE_CHANGE_REFUSED:
            logger.warning("kf session %s: handover failed: %s", session.pk, exc)
            return False
    KfSession.objects.filter(pk=session.pk).update(
        handled_by=KfSession.HandledBy.HUMAN, handed_over_at=timezone.now()
    )
    session.handled_by = KfSession.HandledBy.HUMAN
    return True


def kf_turn_push(turn: Turn) -> None:
    """The push outbox's sender for 微信客服: the answer's parts, then a handover if needed.

    A question the bot could not answer (no relevant knowledge, a failure) is handed to a
    person after the customer has read the bot's reply.
    """
    delivery = AppDelivery.objects.select_related("app").filter(turn=turn).first()
    if delivery is None or not delivery.open_kfid:
        raise PushError(None, "no customer service delivery recorded for this turn")
    parts = message_parts(app_turn_text(turn=turn), limit_bytes=TEXT_MAX_BYTES)
    client = app_client(app=delivery.app)
    try:
        for index in range(delivery.parts_sent, len(parts)):
            kf_send_text(
                client,
                open_kfid=delivery.open_kfid,
                external_userid=delivery.touser,
                content=parts[index],
            )
            delivery.part_sent(index=index)
        if _bot_could_not_answer(turn):
            session = KfSession.objects.filter(
                app=delivery.app, open_kfid=delivery.open_kfid, external_userid=delivery.touser
            ).first()
            if session is not None and session.handled_by == KfSession.HandledBy.BOT:
                kf_handover(client=client, session=session)
    except AppApiError as exc:
        raise PushError(exc.errcode, exc.errmsg, retryable=exc.retryable) from exc
    finally:
        client.close()


def _bot_could_not_answer(turn: Turn) -> bool:
    return turn.status == Turn.Status.FAILED or (
        turn.fixed_reply_reason == Turn.FixedReplyReason.NO_RELEVANT_SOURCE
    )

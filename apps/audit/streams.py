"""Live feed of newly opened review cases, for officers watching in the admin.

Cases are published after their transaction commits to one channel-layer group per bot and
per archive source, so a consumer only joins the groups of its officer's scope; superusers
join the group that carries every case.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.audit.models import ReviewCase

logger = logging.getLogger(__name__)

ALL_GROUP = "audit.flagged.all"


def bot_group(bot_id: int) -> str:
    return f"audit.flagged.bot.{bot_id}"


def source_group(source_id: int) -> str:
    return f"audit.flagged.source.{source_id}"


def case_summary(case: ReviewCase) -> dict[str, Any]:
    """What the feed shows: ids and metadata, never the flagged text (it may be PII)."""
    return {
        "case": case.pk,
        "bot": case.bot_id,
        "archive_source": case.archive_source_id,
        "source": case.source_ref,
        "policy": case.policy_id,
        "policy_name": str(case.policy) if case.policy_id and case.policy else "",
        "action": case.action,
        "created_at": case.created_at.isoformat() if case.created_at else None,
    }


def review_cases_publish(cases: Iterable[ReviewCase]) -> None:
    """Tell officers watching the feed; losing a notice is harmless, so never raise."""
    layer = get_channel_layer()
    if layer is None:
        return
    send = async_to_sync(layer.group_send)
    for case in cases:
        event = {"type": "case.flagged", "case": case_summary(case)}
        groups = [ALL_GROUP]
        if case.bot_id:
            groups.append(bot_group(case.bot_id))
        if case.archive_source_id:
            groups.append(source_group(case.archive_source_id))
        try:
            for group in groups:
                send(group, event)
        except Exception:  # a Redis hiccup must not fail the pull or the answer
            logger.warning("could not publish review case %s", case.pk, exc_info=True)
            return

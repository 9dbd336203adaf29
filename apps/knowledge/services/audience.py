"""Who reads an answer: the asker in a 1:1 chat, every member of a group chat.

A group chat's answer is read by all its members, so retrieval there is filtered for all
of them at once. Membership comes from `GroupChat`, a list an admin registers: WeCom gives
an AI bot no API listing a group's members, and the userids seen speaking miss the silent
ones. Without a trustworthy list the group is treated as the public.
"""

from __future__ import annotations

import logging

from apps.knowledge.models import GroupChat
from apps.knowledge.selectors import Readers

logger = logging.getLogger(__name__)


def chat_readers(*, userid: str, chat_id: str, group: bool) -> Readers:
    """The readers of an answer to `userid` in this chat.

    In a group the registered member list is used only if it contains the asker: a list
    missing the person speaking is stale, and may miss others too, so the group then gets
    only knowledge open to everyone, like a group nobody registered.
    """
    if not group:
        return Readers.employee(userid)
    members = (
        GroupChat.objects.filter(chat_id=chat_id).values_list("member_userids", flat=True).first()
        if chat_id
        else None
    )
    if not members:
        return Readers.public()
    if userid not in members:
        logger.warning(
            "group chat %s: asker %s is not in its registered members; "
            "answering from knowledge open to everyone only",
            chat_id,
            userid,
        )
        return Readers.public()
    return Readers.members(members)

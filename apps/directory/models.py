"""Who the employees are (WeCom's contact directory) and who is in which group chat.

Both moved here from the knowledge app (issue 10) so that bots, knowledge and audit can ask
"who reads this?" without depending on each other. They keep their tables
(`knowledge_directoryuser`, `knowledge_groupchat`), which raw SQL and dumps name.
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils.translation import gettext_lazy as _


class DirectoryUser(models.Model):
    """An employee as WeCom's contact directory knows them (userid, departments, tags)."""

    userid = models.CharField(_("WeCom userid"), max_length=64, unique=True)
    name = models.CharField(_("name"), max_length=100, blank=True)
    departments = ArrayField(
        models.CharField(max_length=100),
        verbose_name=_("departments"),
        default=list,
        blank=True,
        help_text=_("Department names or ids, comma-separated."),
    )
    tags = ArrayField(
        models.CharField(max_length=100),
        verbose_name=_("tags"),
        default=list,
        blank=True,
    )
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        db_table = "knowledge_directoryuser"
        verbose_name = _("directory user")
        verbose_name_plural = _("directory users")
        ordering = ["userid"]

    def __str__(self) -> str:
        return f"{self.name} ({self.userid})" if self.name else self.userid


class GroupChat(models.Model):
    """The complete member list of one WeCom group chat, as an admin registered it.

    Every member of a group reads the bot's answer there, so a group's answers may use
    only passages all its members may read. WeCom gives an AI bot no API to list a group's
    members, and the people seen speaking miss the silent ones, so the list is maintained
    here; a group without one (or whose list lacks the asker) gets only knowledge open to
    everyone.
    """

    MAX_MEMBERS = 2000  # WeCom's limit for an internal group chat

    chat_id = models.CharField(_("WeCom chat id"), max_length=128, unique=True)
    name = models.CharField(_("name"), max_length=100, blank=True)
    member_userids = ArrayField(
        models.CharField(max_length=64),
        verbose_name=_("members"),
        size=MAX_MEMBERS,
        help_text=_(
            "The WeCom userids of everyone in the group, comma-separated. Answers in this "
            "group use only passages every member may read; a list that misses someone "
            "would let them read what they may not, so keep it complete."
        ),
    )
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        db_table = "knowledge_groupchat"
        verbose_name = _("group chat")
        verbose_name_plural = _("group chats")
        ordering = ["chat_id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.chat_id})" if self.name else self.chat_id

"""Files employees send the bot in a 1:1 chat, kept as sources for that conversation.

A model of its own module (imported by `apps.bots.models`) so the models module stays
within its size budget. A file belongs to the turn of the message that carried it: the
retention purge that deletes that turn deletes the file's text with it, so a file is a
source for exactly as long as the conversation's history is kept.
"""

from __future__ import annotations

from datetime import datetime

from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.core.fields import EncryptedTextField


class ConversationFileQuerySet(models.QuerySet["ConversationFile"]):
    def readable_in(self, *, conversation_id: int) -> ConversationFileQuerySet:
        """The files whose text the next questions in this conversation may use."""
        return self.filter(
            conversation_id=conversation_id, status=ConversationFile.Status.READ
        ).order_by("-created_at")

    def read_once(self, *, text: str, kind: str, size: int, now: datetime) -> bool:
        """Store the text once; the download capability is forgotten in the same UPDATE."""
        return bool(
            self.filter(status=ConversationFile.Status.PENDING).update(
                status=ConversationFile.Status.READ,
                text=text,
                kind=kind,
                size_bytes=size,
                media_url="",
                media_aeskey="",
                read_at=now,
            )
        )

    def refuse_once(self, *, reason: str, detail: str, size: int, now: datetime) -> bool:
        return bool(
            self.filter(status=ConversationFile.Status.PENDING).update(
                status=ConversationFile.Status.REFUSED,
                refusal=reason,
                refusal_detail=detail[:500],
                size_bytes=size,
                media_url="",
                media_aeskey="",
                read_at=now,
            )
        )


class ConversationFile(models.Model):
    """A file's text as a source of one conversation (pending until the worker reads it)."""

    class Status(models.TextChoices):
        PENDING = "pending", _("waiting to be read")
        READ = "read", _("read")
        REFUSED = "refused", _("refused")

    conversation = models.ForeignKey(
        "bots.Conversation",
        on_delete=models.CASCADE,
        related_name="files",
        verbose_name=_("conversation"),
    )
    turn = models.OneToOneField(
        "bots.Turn",
        on_delete=models.CASCADE,
        related_name="attached_file",
        verbose_name=_("message"),
        help_text=_("The message that carried the file; purging it deletes the file's text."),
    )
    filename = models.CharField(_("file name"), max_length=255, blank=True)
    kind = models.CharField(_("file type"), max_length=16, blank=True)
    size_bytes = models.PositiveIntegerField(_("size (bytes)"), default=0)
    status = models.CharField(
        _("status"), max_length=10, choices=Status.choices, default=Status.PENDING
    )
    refusal = models.CharField(_("refused because"), max_length=20, blank=True)
    refusal_detail = models.TextField(_("refusal detail"), blank=True)
    text = models.TextField(_("text"), blank=True)
    # WeCom's URL (valid five minutes) and key: only until the worker has read the file.
    media_url = models.TextField(blank=True)
    media_aeskey = EncryptedTextField(blank=True)
    created_at = models.DateTimeField(_("received"), auto_now_add=True)
    read_at = models.DateTimeField(_("read"), null=True, blank=True)

    objects = ConversationFileQuerySet.as_manager()

    class Meta:
        verbose_name = _("file sent in a conversation")
        verbose_name_plural = _("files sent in conversations")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.filename or str(_("(unnamed file)"))

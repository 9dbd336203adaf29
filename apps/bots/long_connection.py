"""A long-connection bot's one connection: who holds it (a lease) and the state it shows.

A model of its own module (imported by `apps.bots.models`) so the models module stays
within its size budget.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _


class LongConnectionQuerySet(models.QuerySet["LongConnection"]):
    def lease_take(self, *, bot_id: int, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Hold (or renew) the bot's one connection: free, expired, or already ours.

        One conditional UPDATE, so two connector replicas racing for a bot cannot both win;
        a holder that stops renewing (killed) loses the bot after `ttl`.
        """
        updated = (
            self.filter(bot_id=bot_id)
            .filter(Q(holder=holder) | Q(holder="") | Q(lease_until__lt=now))
            .update(holder=holder, lease_until=now + ttl)
        )
        return bool(updated)

    def lease_release(self, *, bot_id: int, holder: str) -> int:
        return self.filter(bot_id=bot_id, holder=holder).update(holder="", lease_until=None)


class LongConnection(models.Model):
    """A long-connection bot's lease (which connector holds it) and what the connection does.

    The row is the lease: `holder` and `lease_until` decide which connector replica may
    subscribe the bot. The state fields are what the bot page shows, written by the holder.
    """

    bot = models.OneToOneField(
        "bots.Bot", on_delete=models.CASCADE, related_name="long_connection", verbose_name=_("bot")
    )
    holder = models.CharField(_("held by"), max_length=200, blank=True)
    lease_until = models.DateTimeField(_("lease until"), null=True, blank=True)
    phase = models.CharField(_("state"), max_length=20, default="idle")
    connected_since = models.DateTimeField(_("connected since"), null=True, blank=True)
    last_message_at = models.DateTimeField(_("last message"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True)
    last_error_at = models.DateTimeField(_("last error at"), null=True, blank=True)
    state_at = models.DateTimeField(_("state written"), null=True, blank=True)

    objects = LongConnectionQuerySet.as_manager()

    class Meta:
        verbose_name = _("long connection")
        verbose_name_plural = _("long connections")

    def __str__(self) -> str:
        return f"{self.bot_id} · {self.phase}"

"""Knowledge bases and the employee directory that decides who may see what."""

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
        verbose_name = _("directory user")
        verbose_name_plural = _("directory users")
        ordering = ["userid"]

    def __str__(self) -> str:
        return f"{self.name} ({self.userid})" if self.name else self.userid

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DirectoryConfig(AppConfig):
    """The employee directory and group chats that decide who reads what, below every app
    that asks."""

    name = "apps.directory"
    verbose_name = _("Directory")

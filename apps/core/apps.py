from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class CoreConfig(AppConfig):
    """The shared kernel: pieces every domain app uses and none of them owns."""

    name = "apps.core"
    verbose_name = _("Core")

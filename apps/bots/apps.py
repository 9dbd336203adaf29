from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class BotsConfig(AppConfig):
    name = "apps.bots"
    verbose_name = _("Bots")

    def ready(self) -> None:
        from apps.audit.registry import bot_side_register
        from apps.bots.services import push  # noqa: F401 - connects the end-of-turn push
        from apps.bots.transcripts import transcripts_side

        # Audit sits below bots and never imports it: the officer scope, exports and
        # retention get the bots side from this registration (apps.audit.registry).
        bot_side_register(side=transcripts_side())

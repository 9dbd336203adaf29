from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class WeComAppConfig(AppConfig):
    name = "apps.wecomapp"
    verbose_name = _("WeCom self-built apps")

    def ready(self) -> None:
        from apps.bots.models import Turn
        from apps.bots.services.push import pusher_register
        from apps.wecomapp.kf import kf_turn_push
        from apps.wecomapp.services import app_turn_push

        pusher_register(channel=Turn.Channel.APP, pusher=app_turn_push)
        pusher_register(channel=Turn.Channel.KF, pusher=kf_turn_push)

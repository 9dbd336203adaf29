from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class WechatConfig(AppConfig):
    name = "apps.wechat"
    verbose_name = _("WeChat")

    def ready(self) -> None:
        from apps.bots.models import Turn
        from apps.bots.services.push import pusher_register
        from apps.wechat.services.official_account import turn_push

        # Answers too slow (or too long) for the passive reply go out through the
        # customer-service API once the turn ends.
        pusher_register(channel=Turn.Channel.MP, pusher=turn_push)

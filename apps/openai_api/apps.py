from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class OpenaiApiConfig(AppConfig):
    name = "apps.openai_api"
    verbose_name = _("OpenAI-compatible API")

    def ready(self) -> None:
        from apps.openai_api import schema  # noqa: F401 - registers the key's security scheme

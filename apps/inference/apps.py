from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class InferenceConfig(AppConfig):
    """Local models and the engines that run them, below every app that asks them anything."""

    name = "apps.inference"
    verbose_name = _("Inference")

"""The language of text that is stored or shown to everyone, not to the requesting user."""

from __future__ import annotations

from django.conf import settings
from django.utils import translation


def deployment_language() -> translation.override:
    """Texts saved for every admin to read are rendered in the deployment's language,
    whatever language the request that produced them was in."""
    return translation.override(settings.LANGUAGE_CODE)

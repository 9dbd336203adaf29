"""Texts stored for every admin are rendered in the deployment's language, not the request's."""

from __future__ import annotations

from django.utils import translation
from django.utils.translation import gettext

from apps.core.language import deployment_language


def test_deployment_language_overrides_the_request_language(settings):
    # Given a Chinese deployment and a request being served in English
    settings.LANGUAGE_CODE = "zh-hans"
    with translation.override("en"):
        # When a stored text is rendered in the deployment's language
        with deployment_language():
            stored = gettext("Core")
        # Then it is Chinese, and the request's language is back afterwards
        assert stored == "核心"
        assert gettext("Core") == "Core"

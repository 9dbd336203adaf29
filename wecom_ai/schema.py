"""How the OpenAPI schema (/api/schema/) describes each door's own authentication.

drf-spectacular knows DRF's token and session authentication; the doors' Bearer schemes
are described here, at the project level that sees every door (imported by the URLconf,
so they are registered before a schema is generated). Targets are dotted paths: nothing
of a door is imported by this module.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """The OpenAI-compatible API's keys (apps.openai_api)."""

    target_class = "apps.openai_api.api.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API key (sk-wai-…)."}


class MiniProgramScheme(OpenApiAuthenticationExtension):
    """The mini-program API's access tokens from /api/mp/login (apps.wechat)."""

    target_class = "apps.wechat.auth.MiniProgramAuthentication"
    name = "miniProgramToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "The access token POST /api/mp/login returned.",
        }

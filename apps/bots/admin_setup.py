"""Guided bot setup on the bot's admin page: the callback URL before and after save, generated
credentials, the WeCom console steps per connection mode and an https warning.

Kept apart from `admin.py` so the bot admin stays about what a bot is, and this module about
getting a new admin from "Add bot" to a working callback in WeCom's console.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext
from django.views.decorators.http import require_POST

from apps.bots.models import Bot
from wecom.crypto import generate_encoding_aes_key, generate_token

# Stands for the slug in the previewed URL; the page's script swaps in what is typed.
SLUG_PLACEHOLDER = "__slug__"


def callback_url_template() -> str:
    """The callback URL with a placeholder slug, so the add page can preview it as one types."""
    return settings.PUBLIC_BASE_URL + reverse("bots:callback", kwargs={"slug": SLUG_PLACEHOLDER})


class BotSetupAdminMixin(admin.ModelAdmin):
    """Adds the credential generator, the setup context and the redirect after "Save"."""

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "generate-credentials/",
                self.admin_site.admin_view(require_POST(self.generate_credentials)),
                name="bots_bot_generate_credentials",
            )
        ]
        return own + super().get_urls()

    def generate_credentials(self, request: HttpRequest) -> JsonResponse:
        """Fresh Token and EncodingAESKey from `wecom.crypto`, for the generate buttons.

        Generated on the server so the values come from the same generator (and alphabet)
        the protocol code tests; nothing is stored until the form is saved.
        """
        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            return JsonResponse({"error": gettext("Permission denied.")}, status=403)
        return JsonResponse(
            {"token": generate_token(), "encoding_aes_key": generate_encoding_aes_key()}
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Bot | None = None,
    ) -> HttpResponse:
        context.update(
            public_base_url=settings.PUBLIC_BASE_URL,
            public_base_url_insecure=not settings.PUBLIC_BASE_URL.startswith("https://"),
            generate_credentials_url=reverse(
                f"{self.admin_site.name}:bots_bot_generate_credentials"
            ),
        )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def response_add(
        self, request: HttpRequest, obj: Bot, post_url_continue: str | None = None
    ) -> HttpResponse:
        """After "Save", stay on the bot with its callback URL: the next step is WeCom's console,
        which needs that URL, so the list would be a dead end."""
        response = super().response_add(request, obj, post_url_continue)
        if any(key in request.POST for key in ("_addanother", "_continue", "_popup")):
            return response
        if obj.uses_long_connection:
            text = gettext(
                "The bot “%(name)s” was added. Its connection state below shows when the "
                "connector has subscribed it in WeCom."
            ) % {"name": obj.name}
        else:
            text = gettext(
                "The bot “%(name)s” was added. Its callback URL is %(url)s: paste it into the "
                "bot's API settings in WeCom's console and save there."
            ) % {"name": obj.name, "url": obj.callback_url()}
        # The default "added successfully" message is already queued; ours follows it.
        self.message_user(request, text, messages.SUCCESS)
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:bots_bot_change", args=[obj.pk])
        )


def callback_url_html(obj: Bot) -> str:
    """The callback URL with a copy button; on the add page a preview that follows the slug."""
    copy_label, copied_label = gettext("Copy"), gettext("Copied")
    if obj.pk:
        return format_html(
            '<code id="callback-url">{}</code> <button type="button" class="button" '
            'data-copy-target="callback-url" data-copied-label="{}">{}</button>',
            obj.callback_url(),
            copied_label,
            copy_label,
        )
    return format_html(
        '<code id="callback-url" data-url-template="{}" data-placeholder="{}">{}</code> '
        '<button type="button" class="button" data-copy-target="callback-url" '
        'data-copied-label="{}">{}</button><div class="help">{}</div>',
        callback_url_template(),
        SLUG_PLACEHOLDER,
        callback_url_template().replace(SLUG_PLACEHOLDER, "…"),
        copied_label,
        copy_label,
        gettext("Preview from the slug; WeCom can call it once the bot is saved and enabled."),
    )

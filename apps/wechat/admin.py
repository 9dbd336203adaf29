"""Admin of the WeChat doors: secrets are typed in and never shown again."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from apps.audit.admin.mixins import OperatorAuditAdminMixin
from apps.wechat.models import MiniProgram, OfficialAccount
from wecom.crypto import validate_encoding_aes_key

_KEEP = _("Leave empty to keep the stored one.")


def _secret_field(label: Any, help_text: Any, max_length: int = 256) -> forms.CharField:
    return forms.CharField(
        label=label,
        required=False,
        max_length=max_length,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=help_text,
    )


class _SecretsForm(forms.ModelForm):
    """`new_<field>` fields write the encrypted model fields; empty keeps what is stored."""

    secret_fields: tuple[str, ...] = ()
    required_secrets: tuple[str, ...] = ()

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in self.secret_fields:
            typed = cleaned.get(f"new_{name}") or ""
            if typed:
                setattr(self.instance, name, typed)
            elif name in self.required_secrets and not getattr(self.instance, name):
                self.add_error(f"new_{name}", _("This field is required."))
        return cleaned


class OfficialAccountForm(_SecretsForm):
    secret_fields = ("app_secret", "token", "encoding_aes_key")
    required_secrets = ("app_secret", "token")

    new_app_secret = _secret_field(_("AppSecret"), _KEEP)
    new_token = _secret_field(_("Token"), _KEEP, max_length=32)
    new_encoding_aes_key = _secret_field(
        _("EncodingAESKey"), _("43 characters; compatible and safe mode."), max_length=43
    )

    class Meta:
        model = OfficialAccount
        fields = ("name", "slug", "enabled", "app_id", "mode", "bot", "welcome_text")

    def clean_new_encoding_aes_key(self) -> str:
        value: str = self.cleaned_data["new_encoding_aes_key"]
        if value:
            try:
                validate_encoding_aes_key(value)
            except ValueError:
                raise forms.ValidationError(
                    _("The EncodingAESKey must be exactly 43 letters, digits, '+' or '/'.")
                ) from None
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        mode = cleaned.get("mode")
        key = self.instance.encoding_aes_key
        if mode and mode != OfficialAccount.Mode.PLAINTEXT and len(key or "") != 43:
            self.add_error(
                "new_encoding_aes_key",
                _("Compatible and safe mode need the 43-character EncodingAESKey."),
            )
        return cleaned


class MiniProgramForm(_SecretsForm):
    secret_fields = ("app_secret",)
    required_secrets = ("app_secret",)

    new_app_secret = _secret_field(_("AppSecret"), _KEEP)

    class Meta:
        model = MiniProgram
        fields = ("name", "enabled", "app_id", "bots", "rate_limit_per_minute")


@admin.register(OfficialAccount)
class OfficialAccountAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    form = OfficialAccountForm
    list_display = ("name", "slug", "app_id", "mode", "bot", "enabled")
    list_filter = ("enabled", "mode")
    list_select_related = ("bot",)
    search_fields = ("name", "slug", "app_id")
    prepopulated_fields = {"slug": ("name",)}
    autocomplete_fields = ("bot",)
    readonly_fields = ("callback_url", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "slug", "enabled", "bot", "welcome_text")}),
        (
            _("Server configuration"),
            {
                "fields": (
                    "callback_url",
                    "app_id",
                    "new_app_secret",
                    "new_token",
                    "new_encoding_aes_key",
                    "mode",
                ),
                "description": _(
                    "Copy the URL into the account's server configuration (服务器配置) and "
                    "use the same Token, EncodingAESKey and message encryption mode there."
                ),
            },
        ),
        (_("History"), {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description=_("callback URL path"))
    def callback_url(self, obj: OfficialAccount) -> str:
        return obj.callback_path() if obj.pk is not None else "-"


@admin.register(MiniProgram)
class MiniProgramAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    form = MiniProgramForm
    list_display = ("name", "app_id", "rate_limit_per_minute", "enabled")
    list_filter = ("enabled",)
    search_fields = ("name", "app_id")
    filter_horizontal = ("bots",)
    readonly_fields = ("created_at", "updated_at")

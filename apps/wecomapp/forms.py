"""The app's admin form: Secret, Token and EncodingAESKey are typed in, never shown again."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.wecomapp.models import WeComApp
from wecom.crypto import validate_encoding_aes_key


def _secret_input() -> forms.PasswordInput:
    # render_value: a value typed into a form that fails elsewhere is kept; an unbound form
    # has none, so nothing stored is ever echoed.
    return forms.PasswordInput(render_value=True, attrs={"autocomplete": "off"})


class WeComAppForm(forms.ModelForm):
    new_secret = forms.CharField(
        label=_("Secret"),
        required=False,
        max_length=128,
        strip=True,
        widget=_secret_input(),
        help_text=_("The app's Secret from its page in WeCom. Leave empty to keep the stored one."),
    )
    new_token = forms.CharField(
        label=_("Token"),
        required=False,
        max_length=32,
        strip=True,
        widget=_secret_input(),
        help_text=_(
            "The Token from the app's “receive messages” settings in WeCom. Leave empty to "
            "keep the stored one."
        ),
    )
    new_encoding_aes_key = forms.CharField(
        label=_("EncodingAESKey"),
        required=False,
        max_length=43,
        strip=True,
        widget=_secret_input(),
        help_text=_("43 characters, from the same settings. Leave empty to keep the stored one."),
    )

    class Meta:
        model = WeComApp
        fields = (
            "name",
            "slug",
            "enabled",
            "bot",
            "corp_id",
            "agent_id",
            "message_format",
            "thinking_notice_seconds",
            "test_userid",
        )

    def _required(self, name: str, stored: str, message: Any) -> str:
        value = self.cleaned_data[name]
        if not value and not stored:
            raise forms.ValidationError(message)
        return value

    def clean_new_secret(self) -> str:
        return self._required("new_secret", self.instance.secret, _("A new app needs its Secret."))

    def clean_new_token(self) -> str:
        value = self._required("new_token", self.instance.token, _("A new app needs its Token."))
        if value and (not value.isascii() or not value.isalnum()):
            raise forms.ValidationError(_("The Token contains only letters and digits."))
        return value

    def clean_new_encoding_aes_key(self) -> str:
        value = self._required(
            "new_encoding_aes_key",
            self.instance.encoding_aes_key,
            _("A new app needs its EncodingAESKey."),
        )
        if value:
            try:
                validate_encoding_aes_key(value)
            except ValueError:
                raise forms.ValidationError(
                    _("The EncodingAESKey must be exactly 43 letters, digits, '+' or '/'.")
                ) from None
        return value

    def save(self, commit: bool = True) -> WeComApp:
        app = super().save(commit=False)
        for name in ("secret", "token", "encoding_aes_key"):
            if self.cleaned_data.get(f"new_{name}"):
                setattr(app, name, self.cleaned_data[f"new_{name}"])
        if commit:
            app.save()
        return app

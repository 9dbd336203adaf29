"""Admin forms: secrets are write-only.

A secret typed into a form that then fails validation is rendered back from the submitted
value (so a typo elsewhere does not wipe it); an unbound form has no value, so nothing stored
is ever echoed.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.bots.models import Bot
from wecom.crypto import validate_encoding_aes_key


class BotForm(forms.ModelForm):
    """Token, EncodingAESKey and Secret are typed in, never shown again; empty keeps the stored
    value. Callback mode needs the first two, the long connection the BotID and the Secret."""

    new_token = forms.CharField(
        label=_("Token"),
        required=False,
        max_length=128,
        strip=True,
        widget=forms.PasswordInput(
            render_value=True,
            attrs={
                "autocomplete": "off",
                "data-required-mode": "callback",
                "data-generate": "token",
            },
        ),
        help_text=_(
            "Required in callback mode. The Token from the bot's API settings in WeCom "
            "(or generate one and paste it there). Leave empty to keep the stored one."
        ),
    )
    new_encoding_aes_key = forms.CharField(
        label=_("EncodingAESKey"),
        required=False,
        max_length=43,
        strip=True,
        widget=forms.PasswordInput(
            render_value=True,
            attrs={
                "autocomplete": "off",
                "data-required-mode": "callback",
                "data-generate": "encoding_aes_key",
            },
        ),
        help_text=_(
            "Required in callback mode. 43 characters, from the same page (or generate one "
            "and paste it there). Leave empty to keep the stored one."
        ),
    )

    new_longconn_secret = forms.CharField(
        label=_("Long-connection Secret"),
        required=False,
        max_length=256,
        strip=True,
        widget=forms.PasswordInput(
            render_value=True,
            attrs={"autocomplete": "off", "data-required-mode": "long_connection"},
        ),
        help_text=_(
            "Required for the long connection. The Secret from the bot's long-connection "
            "settings in WeCom. Leave empty to keep the stored one."
        ),
    )

    class Meta:
        model = Bot
        fields = (
            "name",
            "slug",
            "enabled",
            "connection_mode",
            "aibotid",
            "model_profile",
            "system_prompt",
            "temperature",
            "max_tokens",
            "context_turns",
            "welcome_message",
            "welcome_questions",
            "queue_notice_seconds",
            "allowed_userids",
            "allowed_departments",
            "rate_limit_per_minute",
            "knowledge_bases",
            "answer_only_from_sources",
            "no_answer_reply",
            "retrieval_top_k",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "connection_mode" in self.fields:
            # Left out (a form posted before the mode existed) means callback, as before.
            self.fields["connection_mode"].required = False
        if "aibotid" in self.fields:
            self.fields["aibotid"].widget.attrs["data-required-mode"] = "long_connection"

    def clean_connection_mode(self) -> str:
        return self.cleaned_data.get("connection_mode") or Bot.ConnectionMode.CALLBACK

    def _long_connection(self) -> bool:
        return (
            self.data.get(self.add_prefix("connection_mode")) == Bot.ConnectionMode.LONG_CONNECTION
        )

    def clean_new_token(self) -> str:
        value = self.cleaned_data["new_token"]
        if not value and not self.instance.token and not self._long_connection():
            raise forms.ValidationError(_("A new bot needs its Token."))
        if value and (not value.isascii() or not value.isalnum()):
            raise forms.ValidationError(_("The Token contains only letters and digits."))
        return value

    def clean_new_encoding_aes_key(self) -> str:
        value = self.cleaned_data["new_encoding_aes_key"]
        if not value:
            if not self.instance.encoding_aes_key and not self._long_connection():
                raise forms.ValidationError(_("A new bot needs its EncodingAESKey."))
            return value
        try:
            validate_encoding_aes_key(value)
        except ValueError:
            raise forms.ValidationError(
                _("The EncodingAESKey must be exactly 43 letters, digits, '+' or '/'.")
            ) from None
        return value

    def clean(self) -> dict:
        cleaned = super().clean() or {}
        if self._long_connection():
            if not cleaned.get("aibotid"):
                self.add_error("aibotid", _("The long connection needs the bot's BotID."))
            if not cleaned.get("new_longconn_secret") and not self.instance.longconn_secret:
                self.add_error(
                    "new_longconn_secret", _("The long connection needs the bot's Secret.")
                )
        return cleaned

    def save(self, commit: bool = True) -> Bot:
        bot = super().save(commit=False)
        if self.cleaned_data.get("new_token"):
            bot.token = self.cleaned_data["new_token"]
        if self.cleaned_data.get("new_encoding_aes_key"):
            bot.encoding_aes_key = self.cleaned_data["new_encoding_aes_key"]
        if self.cleaned_data.get("new_longconn_secret"):
            bot.longconn_secret = self.cleaned_data["new_longconn_secret"]
        if commit:
            bot.save()
            self.save_m2m()
        return bot

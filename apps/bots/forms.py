"""Admin forms: secrets are write-only, model files are checked before a bot can use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.bots.models import Bot, ModelProfile
from wecom.crypto import validate_encoding_aes_key

GGUF_MAGIC = b"GGUF"


class ModelProfileForm(forms.ModelForm):
    class Meta:
        model = ModelProfile
        fields = (
            "name",
            "gguf_path",
            "context_size",
            "n_gpu_layers",
            "threads",
            "batch_size",
            "slots",
            "prefix_cache_size",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repeat_penalty",
            "chat_format",
            "chat_template",
        )

    def clean_gguf_path(self) -> str:
        value = self.cleaned_data["gguf_path"].strip()
        path = Path(value)
        if not path.is_absolute():
            raise forms.ValidationError(_("Enter an absolute path."))
        try:
            with path.open("rb") as handle:
                magic = handle.read(4)
        except FileNotFoundError:
            raise forms.ValidationError(_("No file exists at this path.")) from None
        except IsADirectoryError:
            raise forms.ValidationError(_("This path is a directory, not a .gguf file.")) from None
        except OSError:
            raise forms.ValidationError(_("The file cannot be read.")) from None
        if magic != GGUF_MAGIC:
            raise forms.ValidationError(_("This file is not a GGUF model."))
        return value

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        slots, batch_size = cleaned.get("slots"), cleaned.get("batch_size")
        if slots is not None and batch_size is not None and slots > batch_size:
            # Every running conversation decodes one token per batch.
            self.add_error(
                "slots",
                _("Parallel conversations cannot exceed the batch size (%(batch)s).")
                % {"batch": batch_size},
            )
        return cleaned


class BotForm(forms.ModelForm):
    """Token and EncodingAESKey are typed in, never shown again; empty keeps the stored value."""

    new_token = forms.CharField(
        label=_("Token"),
        required=False,
        max_length=128,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_("The Token from the bot's API settings in WeCom. Leave empty to keep it."),
    )
    new_encoding_aes_key = forms.CharField(
        label=_("EncodingAESKey"),
        required=False,
        max_length=43,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_("43 characters, from the same page. Leave empty to keep it."),
    )

    class Meta:
        model = Bot
        fields = (
            "name",
            "slug",
            "enabled",
            "aibotid",
            "model_profile",
            "system_prompt",
            "temperature",
            "max_tokens",
            "context_turns",
            "welcome_message",
            "queue_notice_seconds",
            "allowed_userids",
            "allowed_departments",
            "rate_limit_per_minute",
            "knowledge_bases",
            "answer_only_from_sources",
            "retrieval_top_k",
        )

    def clean_new_token(self) -> str:
        value = self.cleaned_data["new_token"]
        if not value and not self.instance.pk:
            raise forms.ValidationError(_("A new bot needs its Token."))
        if value and (not value.isascii() or not value.isalnum()):
            raise forms.ValidationError(_("The Token contains only letters and digits."))
        return value

    def clean_new_encoding_aes_key(self) -> str:
        value = self.cleaned_data["new_encoding_aes_key"]
        if not value:
            if not self.instance.pk:
                raise forms.ValidationError(_("A new bot needs its EncodingAESKey."))
            return value
        try:
            validate_encoding_aes_key(value)
        except ValueError:
            raise forms.ValidationError(
                _("The EncodingAESKey must be exactly 43 letters, digits, '+' or '/'.")
            ) from None
        return value

    def save(self, commit: bool = True) -> Bot:
        bot = super().save(commit=False)
        if self.cleaned_data.get("new_token"):
            bot.token = self.cleaned_data["new_token"]
        if self.cleaned_data.get("new_encoding_aes_key"):
            bot.encoding_aes_key = self.cleaned_data["new_encoding_aes_key"]
        if commit:
            bot.save()
            self.save_m2m()
        return bot

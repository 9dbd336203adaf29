"""Admin forms: model files are checked before a bot can use them; API keys are write-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.core.validators import URLValidator
from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext_lazy as _

from apps.inference.model_download import FILE_NAME, SHA256
from apps.inference.models import ModelProfile
from apps.inference.trial_load import gguf_files_list

GGUF_MAGIC = b"GGUF"


class ModelProfileForm(forms.ModelForm):
    """The model file is chosen from the models folder; typing another path is for superusers
    (`allow_free_path`), since the check below would otherwise probe any file on the server."""

    allow_free_path = True

    gguf_file = forms.ChoiceField(
        label=_("model file"),
        required=False,
        help_text=_(
            "The .gguf files in the models folder (WECOM_AI_MODELS_DIR). Choose one, or leave "
            "this empty and type a path below."
        ),
    )

    base_url = forms.URLField(
        label=_("server URL"),
        required=False,
        max_length=500,
        assume_scheme="http",
        help_text=ModelProfile._meta.get_field("base_url").help_text,
    )
    new_api_key = forms.CharField(
        label=_("API key"),
        required=False,
        max_length=500,
        strip=True,
        widget=forms.PasswordInput(render_value=True, attrs={"autocomplete": "off"}),
        help_text=_(
            "Remote engines: sent as a bearer token. Never shown again; leave empty to keep "
            "the stored one."
        ),
    )
    clear_api_key = forms.BooleanField(label=_("remove the stored API key"), required=False)

    class Meta:
        model = ModelProfile
        fields = (
            "name",
            "kind",
            "gguf_file",
            "gguf_path",
            "base_url",
            "remote_model",
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        files = gguf_files_list(directory=settings.MODELS_DIR)
        self.fields["gguf_file"].choices = [("", _("— another path, typed below —"))] + [
            (str(path), f"{path.name} ({filesizeformat(path.stat().st_size)})") for path in files
        ]
        if self.instance.gguf_path in {str(path) for path in files}:
            self.fields["gguf_file"].initial = self.instance.gguf_path
        self.fields["gguf_path"].required = False
        # A form posted without a kind (older scripts, API clients) means a local model.
        self.fields["kind"].required = False
        if not self.allow_free_path:
            self.fields["gguf_path"].help_text = _(
                "Only superusers may type a path outside the models folder."
            )

    def clean_kind(self) -> str:
        return self.cleaned_data.get("kind") or ModelProfile.Kind.LOCAL

    def _remote(self) -> bool:
        return self.cleaned_data.get("kind") == ModelProfile.Kind.REMOTE

    def clean_base_url(self) -> str:
        # Every question of the profile's bots, and its API key, go to this address: only
        # superusers (`allow_free_path`) may choose it, like a model file outside the folder.
        value: str = self.cleaned_data["base_url"].strip()
        if value != self.instance.base_url and not self.allow_free_path:
            raise forms.ValidationError(_("Only superusers may set or change the server URL."))
        return value

    def clean_gguf_path(self) -> str:
        if self._remote():
            return self.cleaned_data["gguf_path"].strip()
        chosen = self.cleaned_data.get("gguf_file")
        value = chosen or self.cleaned_data["gguf_path"].strip()
        if not value:
            raise forms.ValidationError(_("Choose a model file or type its path."))
        if not chosen and not self.allow_free_path and value != self.instance.gguf_path:
            raise forms.ValidationError(
                _("Choose a file from the models folder; only superusers may type another path.")
            )
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
        if self._remote():
            if not cleaned.get("base_url") and "base_url" not in self.errors:
                self.add_error("base_url", _("A remote engine needs the server's URL."))
            if not cleaned.get("remote_model", "").strip():
                self.add_error("remote_model", _("A remote engine needs the model's name."))
        slots, batch_size = cleaned.get("slots"), cleaned.get("batch_size")
        if slots is not None and batch_size is not None and slots > batch_size:
            # Every running conversation decodes one token per batch.
            self.add_error(
                "slots",
                _("Parallel conversations cannot exceed the batch size (%(batch)s).")
                % {"batch": batch_size},
            )
        return cleaned

    def save(self, commit: bool = True) -> ModelProfile:
        profile: ModelProfile = super().save(commit=False)
        if self.cleaned_data.get("clear_api_key"):
            profile.api_key = ""
        elif self.cleaned_data.get("new_api_key"):
            profile.api_key = self.cleaned_data["new_api_key"]
        if commit:
            profile.save()
            self.save_m2m()
        return profile


class ModelDownloadForm(forms.Form):
    url = forms.URLField(
        label=_("URL"),
        assume_scheme="https",
        validators=[URLValidator(schemes=["http", "https"])],
        help_text=_("Where the .gguf file is served."),
    )
    sha256 = forms.CharField(
        label=_("SHA-256"),
        min_length=64,
        max_length=64,
        help_text=_(
            "The file's published SHA-256 (64 hex digits); a file that differs is discarded."
        ),
    )
    file_name = forms.CharField(
        label=_("file name"),
        max_length=200,
        help_text=_("Saved under this name in the models folder, e.g. qwen2.5-7b-q4_k_m.gguf."),
    )

    def clean_sha256(self) -> str:
        value = self.cleaned_data["sha256"].strip().lower()
        if not SHA256.match(value):
            raise forms.ValidationError(_("Enter 64 hexadecimal digits."))
        return value

    def clean_file_name(self) -> str:
        value = self.cleaned_data["file_name"].strip()
        if not FILE_NAME.match(value):
            raise forms.ValidationError(
                _("Letters, digits, '.', '_' and '-' only, ending in .gguf.")
            )
        if (Path(settings.MODELS_DIR) / value).exists():
            raise forms.ValidationError(_("The models folder already has a file of this name."))
        return value

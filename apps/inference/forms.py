"""Admin forms: model files are checked before a bot can use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.inference.models import ModelProfile

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

"""Admin forms: uploads are checked (size, type, name clash) before anything is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.template.defaultfilters import filesizeformat
from django.utils.translation import gettext_lazy as _

from apps.directory.models import DirectoryUser
from apps.knowledge.models import Document, KnowledgeBase
from apps.knowledge.parsing import SUPPORTED_EXTENSIONS

# The file picker's filter: what the parsers read.
UPLOAD_ACCEPT = ",".join(f".{extension}" for extension in sorted(SUPPORTED_EXTENSIONS))


def upload_check(upload: UploadedFile) -> None:
    """Refuse a file over the size limit or of a type no parser reads, before storing it."""
    limit = settings.KNOWLEDGE_MAX_UPLOAD_BYTES
    if upload.size is not None and upload.size > limit:
        raise forms.ValidationError(
            _("The file is %(size)s, over the %(limit)s upload limit."),
            params={"size": filesizeformat(upload.size), "limit": filesizeformat(limit)},
            code="too_large",
        )
    extension = Path(upload.name or "").suffix.lower().lstrip(".")
    if extension not in SUPPORTED_EXTENSIONS:
        raise forms.ValidationError(
            _("%(name)s cannot be indexed: supported types are %(types)s."),
            params={
                "name": upload.name,
                "types": ", ".join(f".{e}" for e in sorted(SUPPORTED_EXTENSIONS)),
            },
            code="unsupported",
        )


class KnowledgeBaseForm(forms.ModelForm):
    class Meta:
        model = KnowledgeBase
        fields = (
            "name",
            "slug",
            "description",
            "embedder",
            "embedding_profile",
            "chunk_size",
            "chunk_overlap",
            "allowed_departments",
            "allowed_userids",
            "allowed_tags",
            "answer_only_from_sources",
        )

    def clean_embedding_profile(self) -> Any:
        profile = self.cleaned_data.get("embedding_profile")
        if profile is not None and not profile.is_remote and not Path(profile.gguf_path).is_file():
            raise forms.ValidationError(
                _("The model file of this profile does not exist: %(path)s"),
                params={"path": profile.gguf_path},
            )
        return profile

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A form that does not send the embedder (an older client, a script) keeps it.
        self.fields["embedder"].required = False

    def clean_embedder(self) -> str:
        return self.cleaned_data.get("embedder") or self.instance.embedder

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        size, overlap = cleaned.get("chunk_size"), cleaned.get("chunk_overlap")
        if size is not None and overlap is not None and overlap >= size:
            self.add_error("chunk_overlap", _("The overlap must be smaller than the chunk size."))
        return cleaned


class DocumentForm(forms.ModelForm):
    """Adding needs a file; on an existing document a file uploads its next version."""

    upload = forms.FileField(
        label=_("file"),
        required=False,
        help_text=_("PDF, Word (.docx), Excel (.xlsx), Markdown, HTML, text or CSV."),
    )

    class Meta:
        model = Document
        fields = (
            "kb",
            "title",
            "owner",
            "expires_on",
            "allowed_departments",
            "allowed_userids",
            "allowed_tags",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is None:
            self.fields["upload"].required = True
        else:
            self.fields["upload"].label = _("new version")
            self.fields["upload"].help_text = _(
                "Upload a changed file to index it as the next version; the current version "
                "stays searchable until the new one is ready."
            )

    def clean_upload(self) -> UploadedFile | None:
        upload = self.cleaned_data.get("upload")
        if upload is None:
            return None
        upload_check(upload)
        return upload

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        upload, kb = cleaned.get("upload"), cleaned.get("kb") or self.instance_kb()
        if upload is None or kb is None:
            return cleaned
        name = Path(upload.name).name
        clash = Document.objects.filter(kb=kb, original_filename=name).exclude(pk=self.instance.pk)
        if clash.exists():
            self.add_error(
                "upload",
                _(
                    "This knowledge base already has a document named %(name)s; open it and "
                    "upload the file there as a new version."
                )
                % {"name": name},
            )
        return cleaned

    def instance_kb(self) -> KnowledgeBase | None:
        return self.instance.kb if self.instance.kb_id else None


class RetrievalTestForm(forms.Form):
    """The knowledge base page's retrieval test: a question, as everyone or as one employee."""

    question = forms.CharField(label=_("question"), max_length=2000, strip=True)
    userid = forms.CharField(
        label=_("as directory user"),
        max_length=64,
        required=False,
        strip=True,
        help_text=_("Empty = all audiences; a WeCom userid = only what this employee may read."),
    )
    reason = forms.CharField(
        label=_("reason"),
        max_length=1000,
        required=False,
        strip=True,
        help_text=_("Recorded in the access log with the question."),
    )
    top_k = forms.IntegerField(
        label=_("hits"), min_value=1, max_value=50, initial=5, required=False
    )

    def clean_userid(self) -> str:
        userid = self.cleaned_data.get("userid") or ""
        if userid and not DirectoryUser.objects.filter(userid=userid).exists():
            raise forms.ValidationError(_("No directory user has this userid."))
        return userid

"""Forms of the compliance admin: reasons asked before access and export, policy imports,
review decisions and assignments, and archive credentials typed in once."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _

from apps.audit.models import (
    ArchiveKey,
    ArchiveSource,
    AuditPolicy,
    RegexRule,
    ReviewCase,
    SensitiveWordList,
)
from apps.audit.registry import bot_side_get
from apps.audit.services.archive import archive_key_fingerprint
from apps.audit.services.policy import (
    PolicyImportError,
    decode_import_file,
    regex_rules_parse,
    word_lines_check,
)


class AccessReasonForm(forms.Form):
    reason = forms.CharField(
        label=_("Reason"),
        min_length=5,
        max_length=500,
        widget=forms.TextInput(attrs={"size": 80, "autofocus": True}),
        help_text=_("e.g. the case, ticket or request this access is for."),
    )


class ExportReasonForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), min_length=5, max_length=500)


class SensitiveWordListForm(forms.ModelForm):
    import_file = forms.FileField(
        label=_("import from file"),
        required=False,
        help_text=_("A UTF-8 or GB18030 text file, one word per line."),
    )
    import_mode = forms.ChoiceField(
        label=_("import mode"),
        choices=[("replace", _("replace the words")), ("append", _("add to the words"))],
        initial="replace",
    )

    class Meta:
        model = SensitiveWordList
        fields = ("name", "description", "words")
        widgets = {"words": forms.Textarea(attrs={"rows": 20, "cols": 60})}

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        upload = data.get("import_file")
        if upload:
            try:
                text = decode_import_file(upload.read())
            except PolicyImportError as exc:
                raise forms.ValidationError(exc.problems) from None
            words = data.get("words") or ""
            if data.get("import_mode") == "append" and words.strip():
                data["words"] = words.rstrip("\n") + "\n" + text
            else:
                data["words"] = text
            self.instance.words = data["words"]
        problems = word_lines_check(data.get("words") or "")
        if problems:
            self.add_error("words" if not upload else "import_file", problems[:20])
        return data


class AuditPolicyForm(forms.ModelForm):
    regex_import_file = forms.FileField(
        label=_("import regex rules"),
        required=False,
        help_text=_(
            "One pattern per line, optionally 'action<TAB>pattern' (allow, flag, mask, block); "
            "added to the rules above. A file with an invalid pattern is refused as a whole."
        ),
    )
    regex_import_action = forms.ChoiceField(
        label=_("action for imported rules"),
        choices=RegexRule._meta.get_field("action").choices,
        initial="flag",
    )

    class Meta:
        model = AuditPolicy
        fields = (
            "name",
            "description",
            "enabled",
            "pii_resident_id",
            "pii_mobile",
            "pii_bank_card",
            "pii_email",
            "refusal_message",
            "retention_days",
            "legal_hold",
            "legal_hold_reason",
            "llm_review_enabled",
            "llm_review_prompt",
            "llm_review_model",
            "llm_review_threshold",
            "bots",
            "archive_sources",
        )

    def clean_regex_import_file(self) -> str:
        upload = self.cleaned_data.get("regex_import_file")
        if not upload:
            return ""
        try:
            text = decode_import_file(upload.read())
            regex_rules_parse(text, default_action="flag")
        except PolicyImportError as exc:
            raise forms.ValidationError(exc.problems[:20]) from None
        return text


class ReviewCaseForm(forms.ModelForm):
    class Meta:
        model = ReviewCase
        fields = ("decision", "note")

    def clean_decision(self) -> str:
        decision = self.cleaned_data.get("decision")
        if not decision:
            raise forms.ValidationError(_("Choose a decision."))
        return decision


class ReviewScopeForm(forms.Form):
    officer = forms.ModelChoiceField(
        label=_("officer"), queryset=get_user_model().objects.filter(is_staff=True, is_active=True)
    )
    # The bots come from the bots side (`apps.audit.registry`), read when the form is made.
    # Checkboxes, not a multiple <select>: a plain click there drops every other selection.
    bots = forms.ModelMultipleChoiceField(
        label=_("bots"), queryset=None, required=False, widget=forms.CheckboxSelectMultiple
    )
    archive_sources = forms.ModelMultipleChoiceField(
        label=_("archive sources"),
        queryset=ArchiveSource.objects.all(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["bots"].queryset = bot_side_get().bot_model._default_manager.all()


class ReviewOfficersForm(forms.Form):
    """The officers of one bot or archive source, ticked on the assignment page."""

    officers = forms.ModelMultipleChoiceField(
        label=_("officers"),
        queryset=get_user_model()
        .objects.filter(is_staff=True, is_active=True)
        .order_by("username"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )


class ArchiveSourceForm(forms.ModelForm):
    """The archive secret and proxy password are typed in, never shown again."""

    new_secret = forms.CharField(
        label=_("archive secret"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_("The Secret of the session archive app. Leave empty to keep it."),
    )
    new_proxy_password = forms.CharField(
        label=_("proxy password"),
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_("Leave empty to keep it."),
    )

    class Meta:
        model = ArchiveSource
        fields = (
            "name",
            "corp_id",
            "proxy",
            "timeout_seconds",
            "batch_size",
            "pull_interval_minutes",
            "enabled",
        )

    def clean_new_secret(self) -> str:
        value = self.cleaned_data["new_secret"]
        if not value and not self.instance.pk:
            raise forms.ValidationError(_("A new archive source needs its secret."))
        return value

    def save(self, commit: bool = True) -> ArchiveSource:
        source = super().save(commit=False)
        if self.cleaned_data.get("new_secret"):
            source.secret = self.cleaned_data["new_secret"]
        if self.cleaned_data.get("new_proxy_password"):
            source.proxy_password = self.cleaned_data["new_proxy_password"]
        if commit:
            source.save()
            self.save_m2m()
        return source


class ArchiveKeyForm(forms.ModelForm):
    """The private key is pasted once; the admin shows its public key fingerprint after."""

    new_private_key = forms.CharField(
        label=_("private key (PEM)"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60, "autocomplete": "off"}),
        help_text=_("Paste the RSA private key of this version. Leave empty to keep it."),
    )

    class Meta:
        model = ArchiveKey
        fields = ("publickey_ver",)

    def clean_new_private_key(self) -> str:
        value = self.cleaned_data["new_private_key"].strip()
        if not value:
            if not self.instance.pk:
                raise forms.ValidationError(_("A new key version needs its private key."))
            return value
        try:
            self.fingerprint = archive_key_fingerprint(value)
        except (ValueError, TypeError):
            raise forms.ValidationError(
                _("This is not an unencrypted RSA private key in PEM format.")
            ) from None
        return value + "\n"

    def save(self, commit: bool = True) -> ArchiveKey:
        key = super().save(commit=False)
        if self.cleaned_data.get("new_private_key"):
            key.private_key = self.cleaned_data["new_private_key"]
            key.fingerprint = self.fingerprint
        if commit:
            key.save()
        return key

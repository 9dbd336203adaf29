"""Admin forms of the directory."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.directory.models import GroupChat


class GroupChatForm(forms.ModelForm):
    """Members are userids: blanks and repeats are dropped, the order kept for reading."""

    class Meta:
        model = GroupChat
        fields = ("chat_id", "name", "member_userids")

    def clean_member_userids(self) -> list[str]:
        members = [userid.strip() for userid in self.cleaned_data.get("member_userids") or []]
        members = list(dict.fromkeys(userid for userid in members if userid))
        if not members:
            raise forms.ValidationError(_("List at least one member."))
        return members

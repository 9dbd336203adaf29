from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from apps.audit.admin.mixins import OperatorAuditAdminMixin
from apps.core.admin import ReadOnlyAdminMixin
from apps.monitoring.models import AlertChannel, AlertIncident, AlertRule
from apps.monitoring.services.alerts import ChannelBusy, channel_test
from wecom.robot import RobotError


class AlertChannelForm(forms.ModelForm):
    """The robot's webhook key is typed in, never shown again."""

    new_webhook_key = forms.CharField(
        label=_("webhook key"),
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_("The key=… part of the group robot's webhook address. Leave empty to keep it."),
    )

    class Meta:
        model = AlertChannel
        fields = ("name", "kind", "email_to", "enabled")

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        kind = data.get("kind")
        has_key = bool(data.get("new_webhook_key") or self.instance.webhook_key)
        if kind == AlertChannel.Kind.WECOM_ROBOT and not has_key:
            self.add_error("new_webhook_key", _("A group robot needs its webhook key."))
        if kind == AlertChannel.Kind.EMAIL:
            recipients = [line.strip() for line in str(data.get("email_to") or "").splitlines()]
            recipients = [line for line in recipients if line]
            if not recipients:
                self.add_error("email_to", _("List at least one address."))
            validator = forms.EmailField()
            for address in recipients:
                try:
                    validator.clean(address)
                except forms.ValidationError:
                    self.add_error(
                        "email_to",
                        _("%(address)s is not an e-mail address.") % {"address": address},
                    )
        return data

    def save(self, commit: bool = True) -> AlertChannel:
        channel = super().save(commit=False)
        if self.cleaned_data.get("new_webhook_key"):
            channel.webhook_key = self.cleaned_data["new_webhook_key"]
        if commit:
            channel.save()
        return channel


@admin.register(AlertChannel)
class AlertChannelAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    form = AlertChannelForm
    audit_action_prefix = "monitoring.alert_channel"
    list_display = ("name", "kind", "enabled", "updated_at")
    list_filter = ("kind", "enabled")
    search_fields = ("name",)
    actions = ("send_test",)

    @admin.action(description=_("Send a test message"), permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet[AlertChannel]) -> None:
        for channel in queryset:
            try:
                channel_test(channel=channel)
            except (RobotError, ChannelBusy, OSError) as exc:  # shown to the admin
                self.message_user(
                    request,
                    _("%(channel)s: the test message failed: %(error)s")
                    % {"channel": channel.name, "error": exc},
                    messages.ERROR,
                )
            else:
                self.message_user(
                    request, _("%(channel)s: test message sent.") % {"channel": channel.name}
                )


@admin.register(AlertRule)
class AlertRuleAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    audit_action_prefix = "monitoring.alert_rule"
    list_display = ("name", "kind", "threshold", "window_minutes", "bot", "enabled")
    list_filter = ("kind", "enabled")
    list_select_related = ("bot",)
    search_fields = ("name",)
    autocomplete_fields = ("bot",)
    filter_horizontal = ("channels",)
    fieldsets = (
        (None, {"fields": ("name", "enabled", "kind", "threshold", "bot")}),
        (_("Window"), {"fields": ("window_minutes", "min_turns")}),
        (_("Delivery"), {"fields": ("channels", "repeat_minutes")}),
    )


@admin.register(AlertIncident)
class AlertIncidentAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "rule",
        "subject",
        "value",
        "opened_at",
        "announced_at",
        "resolved_at",
        "resolution_sent_at",
        "last_error",
    )
    list_filter = ("rule",)
    list_select_related = ("rule",)
    search_fields = ("subject", "rule__name")
    date_hierarchy = "opened_at"
    show_full_result_count = False

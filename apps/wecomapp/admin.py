"""Admin for self-built apps: credentials write-only, the callback URL to copy, a test send."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from apps.audit.admin.mixins import OperatorAuditAdminMixin, ReadOnlyAdminMixin, request_id_of
from apps.core.fields import is_undecryptable
from apps.wecomapp.forms import WeComAppForm
from apps.wecomapp.models import AppDelivery, KfSession, WeComApp
from apps.wecomapp.services import app_test_message_send
from wecom.app import AppApiError


@admin.register(WeComApp)
class WeComAppAdmin(OperatorAuditAdminMixin, admin.ModelAdmin):
    form = WeComAppForm
    list_display = ("name", "slug", "enabled", "bot", "corp_id", "agent_id", "url_verified_at")
    list_filter = ("enabled", "message_format")
    list_select_related = ("bot",)
    search_fields = ("name", "slug", "corp_id")
    prepopulated_fields = {"slug": ("name",)}
    autocomplete_fields = ("bot",)
    readonly_fields = ("callback_url_copy", "secrets_state", "url_verified_at", "updated_at")
    actions = ("send_test_message",)
    fieldsets = (
        (None, {"fields": ("name", "slug", "enabled", "bot", "callback_url_copy")}),
        (
            _("WeCom credentials"),
            {
                "fields": (
                    "corp_id",
                    "agent_id",
                    "secrets_state",
                    "new_secret",
                    "new_token",
                    "new_encoding_aes_key",
                    "url_verified_at",
                ),
                "description": _(
                    "In WeCom's admin, open the app, set “receive messages” to the callback "
                    "URL above and paste the Token and EncodingAESKey it shows here. Add this "
                    "server's public IP to the app's trusted IPs, or sending fails with 60020."
                ),
            },
        ),
        (
            _("Answers"),
            {
                "fields": (
                    "message_format",
                    "thinking_notice_seconds",
                    "test_userid",
                    "updated_at",
                )
            },
        ),
    )

    class Media:
        js = ("bots/copy.js",)

    @admin.display(description=_("callback URL"))
    def callback_url_copy(self, obj: WeComApp) -> str:
        if not obj.pk:
            return gettext("Shown once the app is saved.")
        return format_html(
            '<code id="callback-url">{}</code> <button type="button" class="button" '
            'data-copy-target="callback-url" data-copied-label="{}">{}</button>',
            obj.callback_url(),
            gettext("Copied"),
            gettext("Copy"),
        )

    @admin.display(description=_("stored credentials"))
    def secrets_state(self, obj: WeComApp) -> str:
        if not obj.pk:
            return "—"
        if any(is_undecryptable(v) for v in (obj.secret, obj.token, obj.encoding_aes_key)):
            return gettext(
                "Stored credentials cannot be decrypted: check FIELD_ENCRYPTION_KEYS "
                "or enter them again."
            )
        states = [
            gettext("Secret set") if obj.secret else gettext("Secret missing"),
            gettext("Token set") if obj.token else gettext("Token missing"),
            gettext("EncodingAESKey set")
            if obj.encoding_aes_key
            else gettext("EncodingAESKey missing"),
        ]
        return " · ".join(states)

    @admin.action(description=_("Send a test message"), permissions=("change",))
    def send_test_message(self, request: HttpRequest, queryset: QuerySet[WeComApp]) -> None:
        for app in queryset:
            try:
                app_test_message_send(
                    app=app, actor=request.user, request_id=request_id_of(request)
                )
            except AppApiError as exc:
                self.message_user(
                    request,
                    gettext("%(app)s: WeCom refused the test message: %(error)s")
                    % {"app": app.name, "error": exc},
                    messages.ERROR,
                )
            else:
                self.message_user(
                    request,
                    gettext("%(app)s: test message sent to %(userid)s.")
                    % {"app": app.name, "userid": app.test_userid},
                    messages.SUCCESS,
                )


@admin.register(AppDelivery)
class AppDeliveryAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Where each app answer went; a final send failure shows WeCom's errcode and errmsg."""

    list_display = (
        "turn",
        "app",
        "touser",
        "open_kfid",
        "turn_status",
        "parts_sent",
        "sent_at",
        "send_error",
    )
    list_filter = ("app",)
    list_select_related = ("turn", "app")
    search_fields = ("touser",)
    show_full_result_count = False

    @admin.display(description=_("status"))
    def turn_status(self, obj: AppDelivery) -> str:
        return obj.turn.get_status_display()

    @admin.display(description=_("answer sent"))
    def sent_at(self, obj: AppDelivery) -> object:
        return obj.turn.pushed_at or "—"

    @admin.display(description=_("sending failed"))
    def send_error(self, obj: AppDelivery) -> str:
        return obj.turn.push_error or "—"


@admin.register(KfSession)
class KfSessionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """微信客服 customers and who answers them now (the bot, or a person after a handover)."""

    list_display = ("external_userid", "app", "open_kfid", "handled_by", "handed_over_at")
    list_filter = ("app", "handled_by")
    list_select_related = ("app",)
    search_fields = ("external_userid", "open_kfid")
    show_full_result_count = False

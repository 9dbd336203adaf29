from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from apps.bots.fields import is_undecryptable
from apps.bots.forms import BotForm, ModelProfileForm
from apps.bots.models import Bot, Conversation, ModelProfile, Turn


class ReadOnlyAdminMixin:
    """Transcripts are records, not documents: nobody edits or deletes them in the admin."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ModelProfile)
class ModelProfileAdmin(admin.ModelAdmin):
    form = ModelProfileForm
    list_display = ("name", "gguf_path", "context_size", "n_gpu_layers", "threads", "bot_count")
    search_fields = ("name", "gguf_path")
    readonly_fields = ("gpu_build", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "gguf_path")}),
        (
            _("Runtime"),
            {"fields": ("context_size", "n_gpu_layers", "gpu_build", "threads", "batch_size")},
        ),
        (
            _("Sampling defaults"),
            {"fields": ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")},
        ),
        (
            _("Chat template"),
            {"fields": ("chat_format", "chat_template"), "classes": ("collapse",)},
        ),
        (_("History"), {"fields": ("created_at", "updated_at")}),
    )

    @admin.display(description=_("bots"))
    def bot_count(self, obj: ModelProfile) -> int:
        return obj.bots.count()

    @admin.display(description=_("GPU offload in this build"))
    def gpu_build(self, obj: ModelProfile) -> str:
        from apps.bots.engine.llama import gpu_offload_supported

        return str(_("yes")) if gpu_offload_supported() else str(_("no (CPU build)"))


@admin.register(Bot)
class BotAdmin(admin.ModelAdmin):
    form = BotForm
    list_display = ("name", "slug", "enabled", "model_profile", "rate_limit_per_minute")
    list_filter = ("enabled", "model_profile")
    list_select_related = ("model_profile",)
    search_fields = ("name", "slug", "aibotid")
    prepopulated_fields = {"slug": ("name",)}
    autocomplete_fields = ("model_profile",)
    readonly_fields = ("callback_url_copy", "secrets_state", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "slug", "enabled", "callback_url_copy")}),
        (
            _("WeCom credentials"),
            {
                "fields": ("aibotid", "secrets_state", "new_token", "new_encoding_aes_key"),
                "description": _(
                    "Copy the callback URL above into the bot's API settings in WeCom, "
                    "then paste the Token and EncodingAESKey WeCom shows there."
                ),
            },
        ),
        (
            _("Answering"),
            {
                "fields": (
                    "model_profile",
                    "system_prompt",
                    "temperature",
                    "max_tokens",
                    "context_turns",
                    "welcome_message",
                )
            },
        ),
        (
            _("Access"),
            {"fields": ("allowed_userids", "allowed_departments", "rate_limit_per_minute")},
        ),
        (_("History"), {"fields": ("created_at", "updated_at")}),
    )

    class Media:
        js = ("bots/copy.js",)

    @admin.display(description=_("callback URL"))
    def callback_url_copy(self, obj: Bot) -> str:
        if not obj.pk:
            return str(_("Shown after the bot is saved."))
        return format_html(
            '<code id="callback-url">{}</code> '
            '<button type="button" class="button" data-copy-target="callback-url">{}</button>',
            obj.callback_url(),
            _("Copy"),
        )

    @admin.display(description=_("stored credentials"))
    def secrets_state(self, obj: Bot) -> str:
        if not obj.pk:
            return "—"
        if is_undecryptable(obj.token) or is_undecryptable(obj.encoding_aes_key):
            return str(
                _(
                    "Stored credentials cannot be decrypted: check FIELD_ENCRYPTION_KEYS "
                    "or enter them again."
                )
            )
        token = _("Token set") if obj.token else _("Token missing")
        key = _("EncodingAESKey set") if obj.encoding_aes_key else _("EncodingAESKey missing")
        return f"{token} · {key}"


class TurnInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Turn
    fields = ("received_at", "status", "question", "answer")
    readonly_fields = fields
    extra = 0
    show_change_link = True
    ordering = ("-received_at",)


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("bot", "userid", "chat_type", "chat_id", "last_turn_at")
    list_filter = ("bot", "chat_type")
    list_select_related = ("bot",)
    search_fields = ("userid", "chat_id")
    date_hierarchy = "last_turn_at"
    inlines = (TurnInline,)
    show_full_result_count = False


@admin.register(Turn)
class TurnAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "received_at",
        "bot",
        "user",
        "short_question",
        "status",
        "first_token_seconds",
        "total_seconds",
        "completion_tokens",
    )
    list_filter = ("bot", "status", "rejection_reason", "received_at")
    list_select_related = ("bot", "conversation")
    search_fields = ("question", "answer", "msgid", "conversation__userid", "conversation__chat_id")
    date_hierarchy = "received_at"
    show_full_result_count = False
    readonly_fields = [field.name for field in Turn._meta.fields]
    change_form_template = "admin/bots/turn/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Turn]:
        return super().get_queryset(request).select_related("bot", "conversation")

    @admin.display(description=_("user"), ordering="conversation__userid")
    def user(self, obj: Turn) -> str:
        return obj.conversation.userid

    @admin.display(description=_("question"))
    def short_question(self, obj: Turn) -> str:
        return obj.question if len(obj.question) <= 60 else obj.question[:60] + "…"

    @admin.display(description=_("first token (s)"))
    def first_token_seconds(self, obj: Turn) -> str:
        if obj.first_token_at is None:
            return "—"
        return f"{(obj.first_token_at - obj.received_at).total_seconds():.2f}"

    @admin.display(description=_("total (s)"))
    def total_seconds(self, obj: Turn) -> str:
        if obj.finished_at is None:
            return "—"
        return f"{(obj.finished_at - obj.received_at).total_seconds():.2f}"

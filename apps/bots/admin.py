from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import Http404, HttpRequest, JsonResponse
from django.template.loader import render_to_string
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from apps.audit.admin.filters import ReviewBotFilter
from apps.audit.admin.mixins import AccessReasonAdminMixin, OperatorAuditAdminMixin, request_id_of
from apps.bots.admin_health import DeliveryHealthAdminMixin
from apps.bots.admin_setup import BotSetupAdminMixin, callback_url_html
from apps.bots.admin_trial import BotTrialChatAdminMixin
from apps.bots.admin_variants import BotVariantAdminMixin
from apps.bots.conversation_files import ConversationFile
from apps.bots.forms import BotForm
from apps.bots.models import Bot, Conversation, LongConnection, Turn
from apps.bots.services.config import (
    bot_delete,
    bot_save,
    model_profile_delete,
    model_profile_save,
)
from apps.bots.thread import cited_chunks, turns_thread
from apps.bots.transcripts import conversations_for_user, turns_for_user
from apps.core.admin import ReadOnlyAdminMixin
from apps.core.fields import is_undecryptable
from apps.inference.admin_setup import ModelProfileSetupAdminMixin
from apps.inference.forms import ModelProfileForm
from apps.inference.model_load import model_load_get
from apps.inference.model_workers import profile_workers
from apps.inference.models import ModelProfile


@admin.register(ModelProfile)
class ModelProfileAdmin(ModelProfileSetupAdminMixin, OperatorAuditAdminMixin, admin.ModelAdmin):
    audit_action_prefix = "bots.model_profile"
    form = ModelProfileForm
    list_display = (
        "name",
        "kind",
        "model_location",
        "context_size",
        "n_gpu_layers",
        "slots",
        "serving_workers",
        "live_load",
        "bot_count",
    )
    list_filter = ("kind",)
    search_fields = ("name", "gguf_path", "base_url", "remote_model")
    readonly_fields = (
        "gpu_build",
        "live_load",
        "trial_load",
        "serving_workers",
        "api_key_state",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "kind", "trial_load")}),
        (_("Local model (llama.cpp)"), {"fields": ("gguf_file", "gguf_path")}),
        (
            _("Remote engine"),
            {
                "fields": (
                    "base_url",
                    "remote_model",
                    "api_key_state",
                    "new_api_key",
                    "clear_api_key",
                )
            },
        ),
        (
            _("Runtime"),
            {"fields": ("context_size", "n_gpu_layers", "gpu_build", "threads", "batch_size")},
        ),
        (
            _("Concurrency"),
            {"fields": ("slots", "prefix_cache_size", "serving_workers", "live_load")},
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

    class Media:
        js = ("inference/trial_load.js",)

    def audit_save(
        self,
        request: HttpRequest,
        obj: ModelProfile,
        form: Any,
        change: bool,
        related: Callable[[], None],
    ) -> None:
        model_profile_save(
            profile=obj, actor=request.user, related=related, request_id=request_id_of(request)
        )

    def audit_delete(self, request: HttpRequest, obj: ModelProfile) -> None:
        model_profile_delete(profile=obj, actor=request.user, request_id=request_id_of(request))

    @admin.display(description=_("model"), ordering="gguf_path")
    def model_location(self, obj: ModelProfile) -> str:
        return f"{obj.remote_model} @ {obj.base_url}" if obj.is_remote else obj.gguf_path

    @admin.display(description=_("stored API key"))
    def api_key_state(self, obj: ModelProfile) -> str:
        if is_undecryptable(obj.api_key):
            return str(
                _(
                    "The stored API key cannot be decrypted: check FIELD_ENCRYPTION_KEYS "
                    "or enter it again."
                )
            )
        return str(_("API key set") if obj.api_key else _("no API key"))

    @admin.display(description=_("bots"))
    def bot_count(self, obj: ModelProfile) -> int:
        return obj.bots.count()

    @admin.display(description=_("inference workers"))
    def serving_workers(self, obj: ModelProfile) -> str:
        if not obj.pk:
            return "—"
        names = [worker.name for worker in profile_workers(profile_id=obj.pk)]
        if not names:
            return str(
                _(
                    "No live inference worker serves this model: its bots cannot answer. "
                    "Start one (celery -A wecom_ai worker -Q inference, or --profiles %(id)s)."
                )
                % {"id": obj.pk}
            )
        return ngettext(
            "%(count)s worker: %(names)s", "%(count)s workers: %(names)s", len(names)
        ) % {
            "count": len(names),
            "names": ", ".join(names),
        }

    @admin.display(description=_("load now"))
    def live_load(self, obj: ModelProfile) -> str:
        if not obj.pk:
            return "—"
        load = model_load_get(profile_id=obj.pk)
        if load is None:
            return str(_("not loaded by any inference worker"))
        return str(
            _(
                "%(running)s of %(slots)s slots busy, %(waiting)s waiting, "
                "about %(wait)s s wait (%(workers)s workers)"
            )
            % {
                "running": load.running,
                "slots": load.slots,
                "waiting": load.waiting,
                "wait": f"{load.estimated_wait_seconds:.0f}",
                "workers": load.workers,
            }
        )

    @admin.display(description=_("GPU offload in this build"))
    def gpu_build(self, obj: ModelProfile) -> str:
        from apps.inference.engine.llama import gpu_offload_supported

        return str(_("yes")) if gpu_offload_supported() else str(_("no (CPU build)"))


# The connector's `ConnectionPhase` values, as the bot page says them.
CONNECTION_PHASES = {
    "idle": _("idle"),
    "connecting": _("connecting"),
    "subscribing": _("subscribing"),
    "connected": _("connected"),
    "backoff": _("waiting to reconnect"),
    "stopped_kicked": _("stopped: another connection took this bot over"),
    "auth_failed": _("stopped: WeCom refused the BotID or Secret"),
    "closed": _("closed"),
}


@admin.register(Bot)
class BotAdmin(
    BotTrialChatAdminMixin,
    BotSetupAdminMixin,
    DeliveryHealthAdminMixin,
    BotVariantAdminMixin,
    OperatorAuditAdminMixin,
    admin.ModelAdmin,
):
    audit_action_prefix = "bots.bot"
    form = BotForm
    list_display = (
        "name",
        "slug",
        "enabled",
        "connection_mode",
        "model_profile",
        "rate_limit_per_minute",
        "delivery_health",
    )
    list_filter = ("enabled", "connection_mode", "model_profile")
    list_select_related = ("model_profile",)
    search_fields = ("name", "slug", "aibotid")
    prepopulated_fields = {"slug": ("name",)}
    autocomplete_fields = ("model_profile",)
    filter_horizontal = ("knowledge_bases",)
    readonly_fields = (
        "callback_url_copy",
        "secrets_state",
        "connection_state",
        "delivery_health_detail",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("name", "slug", "enabled", "connection_mode", "callback_url_copy")}),
        (
            _("WeCom credentials"),
            {
                "fields": (
                    "aibotid",
                    "secrets_state",
                    "new_token",
                    "new_encoding_aes_key",
                    "new_longconn_secret",
                    "connection_state",
                    "delivery_health_detail",
                ),
                "description": _(
                    "Callback mode: copy the callback URL above into the bot's API settings "
                    "in WeCom, then paste the Token and EncodingAESKey WeCom shows there. "
                    "Long connection: enter the BotID and the Secret WeCom shows for it."
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
                    "welcome_questions",
                    "queue_notice_seconds",
                )
            },
        ),
        (
            _("Knowledge"),
            {
                "fields": (
                    "knowledge_bases",
                    "answer_only_from_sources",
                    "no_answer_reply",
                    "retrieval_top_k",
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
        js = ("bots/copy.js", "bots/connection_live.js", "bots/setup.js")

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:object_id>/connection/",
                self.admin_site.admin_view(self.connection_json),
                name="bots_bot_connection",
            )
        ]
        return own + super().get_urls()

    def connection_json(self, request: HttpRequest, object_id: int) -> JsonResponse:
        """The connection state for the bot page's live refresh (no secrets in it)."""
        bot = Bot.objects.filter(pk=object_id).first()
        if bot is None or not self.has_view_or_change_permission(request, bot):
            raise Http404
        return JsonResponse({"text": self.connection_state(bot)})

    def audit_save(
        self, request: HttpRequest, obj: Bot, form: Any, change: bool, related: Callable[[], None]
    ) -> None:
        bot_save(bot=obj, actor=request.user, related=related, request_id=request_id_of(request))

    def audit_delete(self, request: HttpRequest, obj: Bot) -> None:
        bot_delete(bot=obj, actor=request.user, request_id=request_id_of(request))

    @admin.display(description=_("callback URL"))
    def callback_url_copy(self, obj: Bot) -> str:
        return callback_url_html(obj)

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

    @admin.display(description=_("connection state"))
    def connection_state(self, obj: Bot) -> str:
        if not obj.pk:
            return "—"
        text = self._connection_text(obj)
        if not obj.uses_long_connection:
            return text
        return format_html(
            '<span data-connection-url="{}">{}</span>',
            reverse(f"{self.admin_site.name}:bots_bot_connection", args=[obj.pk]),
            text,
        )

    @staticmethod
    def _connection_text(obj: Bot) -> str:
        if not obj.uses_long_connection:
            return str(_("Callback mode: WeCom calls the callback URL."))
        row = LongConnection.objects.filter(bot=obj).first()
        if row is None or not row.state_at:
            return str(_("No connector has picked this bot up yet (is longconn_run running?)."))

        def when(value: Any) -> str:
            return value.isoformat(timespec="seconds") if value else "—"

        text = str(
            _(
                "%(phase)s · connected since %(since)s · last message %(message)s · "
                "held by %(holder)s"
            )
        ) % {
            "phase": CONNECTION_PHASES.get(row.phase, row.phase),
            "since": when(row.connected_since),
            "message": when(row.last_message_at),
            "holder": row.holder or "—",
        }
        if row.last_error:
            text += " · " + str(_("last error (%(at)s): %(error)s")) % {
                "at": when(row.last_error_at),
                "error": row.last_error,
            }
        return text


class TranscriptAccessMixin(AccessReasonAdminMixin):
    """Officers see transcripts of their assigned bots only (others: 404) and say why first.

    Superusers see every bot and are not asked, but their opening is still logged, so the
    access log stays complete.
    """

    def access_reason_required(self, request: HttpRequest) -> bool:
        return not request.user.is_superuser

    def access_reason_default(self, request: HttpRequest) -> str:
        return gettext("Opened by a superuser (no reason asked).")


# The latest turns a conversation page shows (and logs); older ones stay on the turn list.
THREAD_TURNS = 200


@admin.register(Conversation)
class ConversationAdmin(TranscriptAccessMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    """The conversation as a chat thread: one reason opens it, every turn shown is logged."""

    list_display = ("bot", "userid", "chat_type", "chat_id", "last_turn_at")
    list_filter = (ReviewBotFilter, "chat_type")
    list_select_related = ("bot",)
    search_fields = ("userid", "chat_id")
    date_hierarchy = "last_turn_at"
    show_full_result_count = False
    fields = ("bot", "userid", "chat_type", "chat_id", "created_at", "last_turn_at")
    readonly_fields = fields
    change_form_template = "admin/bots/conversation/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return conversations_for_user(user=request.user).select_related("bot")

    def access_shown_with(self, request: HttpRequest, obj: Model) -> list[Model]:
        # The thread shows these turns, questions and answers included: the same list is
        # logged and rendered, so a turn arriving in between is neither shown nor logged.
        turns = list(
            Turn.objects.filter(conversation=obj)
            .select_related("bot", "conversation")
            .order_by("-received_at", "-pk")[:THREAD_TURNS]
        )
        request._thread_turns = turns  # type: ignore[attr-defined]
        return [*turns, *cited_chunks(turns)]

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Any:
        turns = getattr(request, "_thread_turns", [])
        context["thread"] = turns_thread(turns)
        context["thread_truncated"] = len(turns) >= THREAD_TURNS
        return super().render_change_form(request, context, *args, **kwargs)


TURN_HIDDEN_FIELDS = ("response_url", "filter_decisions", "sources", "feedback_detail")


@admin.register(Turn)
class TurnAdmin(TranscriptAccessMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "received_at",
        "bot",
        "channel",
        "user",
        "short_question",
        "status",
        "first_token_seconds",
        "total_seconds",
        "completion_tokens",
        "is_test",
    )
    list_filter = (
        ReviewBotFilter,
        "channel",
        "is_test",
        "status",
        "rejection_reason",
        "fixed_reply_reason",
        "received_at",
    )
    list_select_related = ("bot", "conversation")
    search_fields = ("question", "answer", "msgid", "conversation__userid", "conversation__chat_id")
    date_hierarchy = "received_at"
    show_full_result_count = False
    # response_url is a bearer capability (anyone holding it can post into the chat): never
    # shown. The JSON fields are read as words in the chat bubble instead.
    exclude = TURN_HIDDEN_FIELDS
    readonly_fields = [
        "as_chat",
        "conversation_link",
        *(field.name for field in Turn._meta.fields if field.name not in TURN_HIDDEN_FIELDS),
        "sent_file",
    ]
    change_form_template = "admin/bots/turn/change_form.html"
    # Opened from its conversation's thread: the reason given there covers it.
    access_reason_reuse = True

    @admin.display(description=_("file sent"))
    def sent_file(self, obj: Turn) -> str:
        """The file this message carried and what became of it (its text is a chat source)."""
        file = ConversationFile.objects.filter(turn=obj).first()
        if file is None:
            return "—"
        outcome = file.get_status_display()
        if file.status == ConversationFile.Status.READ:
            outcome = _("read, %(chars)s characters") % {"chars": f"{len(file.text):,}"}
        elif file.refusal:
            outcome = f"{outcome}: {file.refusal}"
        return f"{file} · {outcome}"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Turn]:
        return turns_for_user(user=request.user).select_related("bot", "conversation")

    def access_shown_with(self, request: HttpRequest, obj: Model) -> list[Model]:
        return list(cited_chunks([obj]))  # type: ignore[list-item]

    @admin.display(description=_("as the chat shows it"))
    def as_chat(self, obj: Turn) -> str:
        return render_to_string("admin/bots/chat_thread.html", {"thread": turns_thread([obj])})

    @admin.display(description=_("conversation"))
    def conversation_link(self, obj: Turn) -> str:
        return format_html(
            '<a href="{}" id="turn-conversation">{}</a>',
            reverse(f"{self.admin_site.name}:bots_conversation_change", args=[obj.conversation_id]),
            _("Open the whole conversation"),
        )

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

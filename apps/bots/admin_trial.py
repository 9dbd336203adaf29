"""The test chat on a bot's admin page: ask as an employee, watch the answer come in.

Only users who may change the bot may use it (the answers draw on the knowledge the chosen
employee may read). The page asks with a POST and then polls the turn's state, which a
session may read only for the test turns it asked itself.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path, reverse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET, require_POST

from apps.audit.admin.mixins import request_id_of
from apps.bots.models import Bot, Turn
from apps.bots.services.trial import EXTERNAL_USERID, trial_turn_ask, trial_turn_state
from apps.directory.models import DirectoryUser

# The test turns this session asked: the only ones its page may read back.
_SESSION_TURNS = "bots.test_chat_turns"
_SESSION_TURNS_KEPT = 50
# The directory users offered as suggestions; any directory userid may be typed.
_SUGGESTED_USERS = 300


class TrialChatForm(forms.Form):
    userid = forms.CharField(label=_("Ask as"), max_length=64, required=False)
    external = forms.BooleanField(label=_("as an external user"), required=False)
    question = forms.CharField(label=_("Question"), max_length=2000)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("external"):
            data["userid"] = EXTERNAL_USERID
        elif not data.get("userid"):
            self.add_error("userid", gettext("Choose an employee from the directory."))
        elif not DirectoryUser.objects.filter(userid=data["userid"]).exists():
            self.add_error("userid", gettext("No employee with this userid in the directory."))
        return data


class BotTrialChatAdminMixin(admin.ModelAdmin):
    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<int:object_id>/test-chat/",
                self.admin_site.admin_view(require_POST(self.trial_chat_ask)),
                name="bots_bot_test_chat",
            ),
            path(
                "<int:object_id>/test-chat/<int:turn_id>/",
                self.admin_site.admin_view(require_GET(self.trial_chat_state)),
                name="bots_bot_test_chat_turn",
            ),
        ]
        return own + super().get_urls()

    def _trial_bot(self, request: HttpRequest, object_id: int) -> Bot:
        bot = Bot.objects.filter(pk=object_id).first()
        if bot is None or not self.has_change_permission(request, bot):
            raise Http404
        return bot

    def trial_chat_ask(self, request: HttpRequest, object_id: int) -> JsonResponse:
        bot = self._trial_bot(request, object_id)
        form = TrialChatForm(request.POST)
        if not form.is_valid():
            return JsonResponse({"errors": form.errors}, status=400)
        turn = trial_turn_ask(
            bot=bot,
            userid=form.cleaned_data["userid"],
            question=form.cleaned_data["question"],
            actor=request.user,
            request_id=request_id_of(request),
        )
        asked = [*request.session.get(_SESSION_TURNS, []), turn.pk][-_SESSION_TURNS_KEPT:]
        request.session[_SESSION_TURNS] = asked
        url = reverse(f"{self.admin_site.name}:bots_bot_test_chat_turn", args=[bot.pk, turn.pk])
        return JsonResponse({"turn": turn.pk, "poll": url, **trial_turn_state(turn=turn)})

    def trial_chat_state(self, request: HttpRequest, object_id: int, turn_id: int) -> JsonResponse:
        bot = self._trial_bot(request, object_id)
        if turn_id not in request.session.get(_SESSION_TURNS, []):
            raise Http404
        turn = Turn.objects.filter(pk=turn_id, bot=bot, is_test=True).first()
        if turn is None:
            raise Http404
        return JsonResponse(trial_turn_state(turn=turn))

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Bot | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk and self.has_change_permission(request, obj):
            context["trial_chat"] = {
                "ask_url": reverse(f"{self.admin_site.name}:bots_bot_test_chat", args=[obj.pk]),
                "users": DirectoryUser.objects.order_by("userid").values_list("userid", "name")[
                    :_SUGGESTED_USERS
                ],
                "external_userid": EXTERNAL_USERID,
            }
        return super().render_change_form(request, context, add, change, form_url, obj)

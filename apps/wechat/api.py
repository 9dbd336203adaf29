"""Mini-program REST endpoints (`/api/mp/`): login, token refresh, chat as server-sent events.

The chat answer streams from the turn's live stream state (what the worker writes to Redis):
`delta` events carry new text as it is written (`replace` when the text was rewritten, as
when a policy withholds a draft), then one `done` event with the turn id, its status, the
whole answer and its sources.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils.translation import gettext_lazy as _
from rest_framework import serializers, status
from rest_framework.exceptions import AuthenticationFailed, NotFound, Throttled
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.views import TokenRefreshView

from apps.bots.models import Turn
from apps.bots.streams import stream_state_get
from apps.wechat.auth import MiniProgramAuthentication, MiniProgramUser
from apps.wechat.services import miniprogram as service

_POLL_SECONDS = 0.1
_KEEPALIVE_SECONDS = 15.0


class LoginSerializer(serializers.Serializer):
    code = serializers.CharField(max_length=128, help_text=_("The code from wx.login()."))
    app_id = serializers.CharField(
        max_length=64,
        required=False,
        default="",
        help_text=_("The mini program's AppID; needed only when several are configured."),
    )


class TokenPairSerializer(serializers.Serializer):
    access = serializers.CharField()
    refresh = serializers.CharField()


class ChatSerializer(serializers.Serializer):
    bot = serializers.SlugField(max_length=50, help_text=_("The bot's slug."))
    message = serializers.CharField(max_length=4000, trim_whitespace=True)
    conversation = serializers.RegexField(
        r"^[A-Za-z0-9_-]*$",
        max_length=40,
        required=False,
        default="",
        help_text=_("The user's own name for a conversation; empty is the default one."),
    )


class LoginView(APIView):
    """Exchange a `wx.login` code for an access and a refresh token."""

    authentication_classes = [MiniProgramAuthentication]  # for 401, not 403, on a bad code
    permission_classes = [AllowAny]
    serializer_class = LoginSerializer  # what schema generators describe

    def post(self, request: Request) -> Response:
        params = LoginSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        try:
            tokens = service.miniprogram_login(
                code=params.validated_data["code"], app_id=params.validated_data["app_id"]
            )
        except service.LoginRefused as exc:
            raise AuthenticationFailed(
                _("The login code is invalid or expired. Call wx.login() again.")
            ) from exc
        return Response(TokenPairSerializer(tokens).data)


class RefreshView(TokenRefreshView):
    """A new access token for a valid refresh token."""

    authentication_classes = [MiniProgramAuthentication]
    permission_classes = [AllowAny]


class ChatView(APIView):
    """Ask a bot; the answer comes back as `text/event-stream`."""

    authentication_classes = [MiniProgramAuthentication]
    permission_classes = [IsAuthenticated]
    serializer_class = ChatSerializer  # the request; the answer is text/event-stream

    def post(self, request: Request) -> StreamingHttpResponse:
        params = ChatSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        user: MiniProgramUser = request.user  # type: ignore[assignment]
        program = service.miniprogram_for(app_id=user.app_id)
        if program is None:
            raise AuthenticationFailed(_("This mini program is no longer enabled."))
        bot = program.bots.filter(slug=params.validated_data["bot"], enabled=True).first()
        if bot is None:
            raise NotFound(_("No such bot in this mini program."))
        if service.miniprogram_rate_limited(program=program, user=user):
            raise Throttled(wait=60, detail=str(_("Too many questions. Please wait a minute.")))
        turn = service.miniprogram_chat_receive(
            program=program,
            user=user,
            bot=bot,
            message=params.validated_data["message"],
            conversation=params.validated_data["conversation"],
        )
        response = StreamingHttpResponse(
            _events(turn.pk, turn.stream_id, params.validated_data["conversation"]),
            content_type="text/event-stream",
            status=status.HTTP_200_OK,
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: pass events on at once
        return response


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _events(turn_id: int, stream_id: str, conversation: str) -> AsyncIterator[bytes]:
    """Text as the worker writes it, then the turn as it ended."""
    shown = ""
    deadline = time.monotonic() + settings.WECOM_STREAM_DEADLINE_SECONDS + 30
    quiet_since = time.monotonic()
    yield _event("turn", {"turn": turn_id, "conversation": conversation})
    while time.monotonic() < deadline:
        state = await sync_to_async(stream_state_get)(stream_id)
        content = state.content if state is not None else ""
        if content != shown:
            if content.startswith(shown):
                yield _event("delta", {"text": content[len(shown) :]})
            else:
                yield _event("replace", {"text": content})
            shown = content
            quiet_since = time.monotonic()
        if state is not None and state.finish:
            break
        if time.monotonic() - quiet_since > _KEEPALIVE_SECONDS:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(_POLL_SECONDS)
    yield _event("done", await sync_to_async(_turn_summary)(turn_id, deadline))


def _turn_summary(turn_id: int, deadline: float) -> dict[str, Any]:
    # The worker finishes the stream a moment before it commits the turn's end.
    while True:
        turn = Turn.objects.get(pk=turn_id)
        if turn.is_terminal or time.monotonic() > deadline:
            break
        time.sleep(_POLL_SECONDS)
    return {
        "turn": turn.pk,
        "status": turn.status,
        "answer": turn.answer,
        "sources": turn.sources or [],
    }

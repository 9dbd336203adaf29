"""The OpenAI-compatible endpoints: `/v1/models` and `/v1/chat/completions`.

Views check the key and the request, then call the services; a question becomes a turn
answered by a worker like any WeCom message, and the view follows it to its end (SSE
chunks while it grows, or one JSON once it ended). Errors keep OpenAI's shape, so the
official clients raise their usual exceptions.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib.auth.models import AnonymousUser
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from apps.bots.models import Bot, Turn
from apps.openai_api.models import ApiKey
from apps.openai_api.progress import Deltas, Progress, turn_follow, turn_wait
from apps.openai_api.serializers import (
    ChatCompletionRequestSerializer,
    ChatCompletionSerializer,
    ErrorSerializer,
    ModelListSerializer,
    ModelSerializer,
)
from apps.openai_api.services.completions import (
    Refusal,
    completion_asker,
    completion_deadline,
    completion_receive,
    completion_refusal,
    finish_reason,
    key_rate_limited,
)
from apps.openai_api.services.keys import api_key_authenticate, api_key_bots

OWNER = "wecom-ai"


class OpenAIError(exceptions.APIException):
    """An error in OpenAI's shape: `{"error": {"message", "type", "code"}}`."""

    def __init__(self, *, status: int, message: str, type_: str, code: str | None) -> None:
        super().__init__(detail=message)
        self.status_code = status
        self.type = type_
        self.code = code


def _error_response(exc: Exception) -> JsonResponse:
    if isinstance(exc, OpenAIError):
        status, message, type_, code = exc.status_code, str(exc.detail), exc.type, exc.code
    elif isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        status, type_, code = 401, "invalid_request_error", "invalid_api_key"
        message = _("Incorrect or missing API key. Pass a valid key as a Bearer token.")
    elif isinstance(exc, exceptions.ValidationError):
        status, type_, code = 400, "invalid_request_error", "invalid_request"
        message = _validation_message(exc.detail)
    elif isinstance(exc, exceptions.APIException):
        status, type_, code = exc.status_code, "invalid_request_error", exc.default_code
        message = str(exc.detail)
    else:
        raise exc
    body = {"error": {"message": message, "type": type_, "code": code, "param": None}}
    response = JsonResponse(body, status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


def _validation_message(detail: Any, path: str = "") -> str:
    """The first problem, named by its field path (`messages.0.content: …`)."""
    if isinstance(detail, dict):
        for name, value in detail.items():
            where = name if name != "non_field_errors" else ""
            return _validation_message(value, f"{path}.{where}".strip(".") if where else path)
    if isinstance(detail, list) and detail:
        for index, value in enumerate(detail):
            if value:
                inner = f"{path}.{index}" if isinstance(value, dict | list) else path
                return _validation_message(value, inner)
    return f"{path}: {detail}" if path else str(detail)


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer sk-wai-…`; the key is `request.auth`."""

    def authenticate(self, request: Request) -> tuple[AnonymousUser, ApiKey] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _space, raw_key = header.partition(" ")
        if scheme.lower() != "bearer" or not raw_key.strip():
            return None
        key = api_key_authenticate(raw_key=raw_key.strip())
        if key is None:
            raise exceptions.AuthenticationFailed()
        return AnonymousUser(), key

    def authenticate_header(self, request: Request) -> str:
        return "Bearer"


class HasApiKey(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ApiKey)


class OpenAIView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes = [HasApiKey]
    throttle_classes: list[Any] = []  # each key has its own limit (`ApiKey.rate_limit_per_minute`)
    parser_classes = [JSONParser]

    def handle_exception(self, exc: Exception) -> HttpResponse:
        return _error_response(exc)


def _model(bot: Bot) -> dict[str, Any]:
    return {
        "id": bot.slug,
        "object": "model",
        "created": int(bot.created_at.timestamp()),
        "owned_by": OWNER,
    }


def _key_bot(key: ApiKey, slug: str) -> Bot:
    """The key's bot by slug; another key's bot is as unknown as a bot that does not exist."""
    bot = next((bot for bot in api_key_bots(key=key) if bot.slug == slug), None)
    if bot is None:
        raise OpenAIError(
            status=404,
            message=_("The model %(model)s does not exist or this key may not use it.")
            % {"model": slug},
            type_="invalid_request_error",
            code="model_not_found",
        )
    return bot


_ERROR_RESPONSES = {
    status: OpenApiResponse(ErrorSerializer, description=description)
    for status, description in (
        (400, "Bad request"),
        (401, "Missing, wrong or revoked API key"),
        (403, "The key's user may not use this bot"),
        (404, "Unknown model (or one this key may not use)"),
        (429, "Rate limit"),
        (500, "The answer failed"),
        (504, "The answer did not end in time"),
    )
}


class ModelListView(OpenAIView):
    @extend_schema(
        operation_id="models_list",
        summary="The bots this key may use",
        responses={200: ModelListSerializer, 401: _ERROR_RESPONSES[401]},
        tags=["OpenAI-compatible API"],
    )
    def get(self, request: Request) -> JsonResponse:
        key: ApiKey = request.auth
        return JsonResponse(
            {"object": "list", "data": [_model(bot) for bot in api_key_bots(key=key)]}
        )


class ModelDetailView(OpenAIView):
    @extend_schema(
        operation_id="models_retrieve",
        summary="One bot this key may use",
        responses={200: ModelSerializer, 401: _ERROR_RESPONSES[401], 404: _ERROR_RESPONSES[404]},
        tags=["OpenAI-compatible API"],
    )
    def get(self, request: Request, model: str) -> JsonResponse:
        return JsonResponse(_model(_key_bot(request.auth, model)))


class ChatCompletionsView(OpenAIView):
    @extend_schema(
        operation_id="chat_completions_create",
        summary="Ask a bot (the last user message is the question)",
        request=ChatCompletionRequestSerializer,
        responses={
            (200, "application/json"): ChatCompletionSerializer,
            (200, "text/event-stream"): OpenApiResponse(
                OpenApiTypes.STR,
                description="With `stream: true`: `chat.completion.chunk` events, then "
                "`data: [DONE]`.",
            ),
            **_ERROR_RESPONSES,
        },
        examples=[
            OpenApiExample(
                "Question",
                value={"model": "hr", "messages": [{"role": "user", "content": "年假几天？"}]},
                request_only=True,
            )
        ],
        tags=["OpenAI-compatible API"],
    )
    def post(self, request: Request) -> HttpResponse:
        params = ChatCompletionRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        key: ApiKey = request.auth
        bot = _key_bot(key, data["model"])
        asker = completion_asker(key=key, user=data.get("user") or "")
        if asker is None:
            raise OpenAIError(
                status=401,
                message=_("This key's employee is no longer in the directory."),
                type_="invalid_request_error",
                code="invalid_api_key",
            )
        if key_rate_limited(key=key):
            raise OpenAIError(
                status=429,
                message=_("This key made too many requests. Please wait a minute."),
                type_="rate_limit_exceeded",
                code="rate_limit_exceeded",
            )
        turn = completion_receive(bot=bot, asker=asker, question=data["messages"][-1]["content"])
        _raise_refusal(turn)
        if data["stream"]:
            options = data.get("stream_options") or {}
            response = StreamingHttpResponse(
                completion_events(turn, usage=bool(options.get("include_usage"))),
                content_type="text/event-stream",
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # nginx: pass each chunk on at once
            return response
        ended = async_to_sync(turn_wait)(turn_id=turn.pk, until=completion_deadline(turn=turn))
        return JsonResponse(_completion(_ended_or_raise(ended)))


def _raise_refusal(turn: Turn) -> None:
    refusal = completion_refusal(turn=turn)
    if refusal is None:
        return
    status = refusal.value
    type_, code = {
        Refusal.RATE_LIMITED: ("rate_limit_exceeded", "rate_limit_exceeded"),
        Refusal.NOT_ALLOWED: ("permission_error", "not_allowed"),
        Refusal.EMPTY: ("invalid_request_error", "invalid_request"),
    }[refusal]
    raise OpenAIError(status=status, message=turn.answer, type_=type_, code=code)


def _ended_or_raise(turn: Turn | None) -> Turn:
    if turn is None:
        raise OpenAIError(
            status=504,
            message=_("The answer took too long. Please try again later."),
            type_="server_error",
            code="timeout",
        )
    if turn.status == Turn.Status.FAILED:
        raise OpenAIError(
            status=500,
            message=_("Sorry, something went wrong while answering. Please try again later."),
            type_="server_error",
            code="answer_failed",
        )
    return turn


def _usage(turn: Turn) -> dict[str, int]:
    return {
        "prompt_tokens": turn.prompt_tokens,
        "completion_tokens": turn.completion_tokens,
        "total_tokens": turn.prompt_tokens + turn.completion_tokens,
    }


def _completion(turn: Turn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.answer}
    if turn.reasoning:
        message["reasoning_content"] = turn.reasoning
    return {
        "id": f"chatcmpl-{turn.stream_id}",
        "object": "chat.completion",
        "created": int(turn.received_at.timestamp()),
        "model": turn.bot.slug,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(turn=turn)}],
        "usage": _usage(turn),
    }


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


async def completion_events(turn: Turn, *, usage: bool) -> AsyncIterator[bytes]:
    """The turn as OpenAI's chunks: the role, growing text, the finish reason, `[DONE]`."""
    created, model = int(turn.received_at.timestamp()), turn.bot.slug

    def chunk(delta: dict[str, Any], reason: str | None = None) -> bytes:
        return _sse(
            {
                "id": f"chatcmpl-{turn.stream_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
        )

    yield chunk({"role": "assistant", "content": ""})
    deltas = Deltas()
    ended: Turn | None = None
    async for item in turn_follow(turn_id=turn.pk, until=completion_deadline(turn=turn)):
        if isinstance(item, Progress):
            reasoning, answer = deltas.step(item)
        else:
            ended = item
            if ended.status == Turn.Status.FAILED:
                break
            reasoning, answer = deltas.final(reasoning=ended.reasoning, answer=ended.answer)
        if reasoning:
            yield chunk({"reasoning_content": reasoning})
        if answer:
            yield chunk({"content": answer})
    try:
        ended = _ended_or_raise(ended)
    except OpenAIError as exc:
        yield _sse({"error": {"message": str(exc.detail), "type": exc.type, "code": exc.code}})
        return
    yield chunk({}, finish_reason(turn=ended))
    if usage:
        yield _sse(
            {
                "id": f"chatcmpl-{turn.stream_id}",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(ended),
            }
        )
    yield _sse("[DONE]")

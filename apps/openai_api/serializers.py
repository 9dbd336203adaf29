"""Request and response shapes of the OpenAI-compatible endpoints (also their OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

ROLES = ("system", "developer", "user", "assistant", "tool")
# Parts of a message's `content` list that carry text; anything else (images, audio) is refused.
TEXT_PARTS = frozenset({"text", "input_text"})


def message_text(content: Any) -> str:
    """A message's text: `content` is a string or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
                raise serializers.ValidationError(_("Only text content is supported."))
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise serializers.ValidationError(_("A message's content must be text."))


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = serializers.JSONField(
        help_text="A string, or a list of text parts ({type: text, text})."
    )
    name = serializers.CharField(required=False, allow_blank=True)

    def validate_content(self, value: Any) -> str:
        return message_text(value)


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(required=False, default=False)


class ChatCompletionRequestSerializer(serializers.Serializer):
    """What a client sends. The bot's own settings decide sampling: `temperature`,
    `max_tokens` and the like are accepted and ignored."""

    model = serializers.CharField(max_length=50, help_text="The bot's slug (see /v1/models).")
    messages = MessageSerializer(many=True, allow_empty=False)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    user = serializers.CharField(
        max_length=256,
        required=False,
        allow_blank=True,
        help_text="Your end user's id: each gets a conversation (history) of their own.",
    )

    def validate_messages(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if value[-1]["role"] != "user":
            raise serializers.ValidationError(_("The last message must be the user's question."))
        if not value[-1]["content"].strip():
            raise serializers.ValidationError(_("The question is empty."))
        return value


# --- responses (documentation only: the views build plain dicts) ---------------------------


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class AssistantMessageSerializer(serializers.Serializer):
    role = serializers.CharField(default="assistant")
    content = serializers.CharField(help_text="The answer, with its sources appended.")
    reasoning_content = serializers.CharField(
        required=False, help_text="A reasoning model's thinking (its <think> block)."
    )


class ChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = AssistantMessageSerializer()
    finish_reason = serializers.ChoiceField(choices=["stop", "length", "content_filter"])


class ChatCompletionSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="chat.completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChoiceSerializer(many=True)
    usage = UsageSerializer()


class ModelSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The bot's slug.")
    object = serializers.CharField(default="model")
    created = serializers.IntegerField()
    owned_by = serializers.CharField()


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ModelSerializer(many=True)


class ErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField()
    code = serializers.CharField(allow_null=True)
    param = serializers.CharField(allow_null=True, required=False)


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()

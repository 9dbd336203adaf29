"""The OpenAI-compatible endpoints; the project includes these under `/v1/`."""

from django.urls import path

from apps.openai_api.api import ChatCompletionsView, ModelDetailView, ModelListView

app_name = "openai_api"

urlpatterns = [
    path("chat/completions", ChatCompletionsView.as_view(), name="chat-completions"),
    path("models", ModelListView.as_view(), name="models"),
    path("models/<str:model>", ModelDetailView.as_view(), name="model"),
]

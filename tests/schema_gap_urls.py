"""The project's URLs plus a plain Django view under /api/ that no schema describes
(tests/test_openai_api.py: the schema check must notice it)."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from wecom_ai.urls import urlpatterns as project_urlpatterns


def undocumented(request: HttpRequest) -> JsonResponse:
    return JsonResponse({})


urlpatterns = [path("api/undocumented/<int:pk>/", undocumented), *project_urlpatterns]

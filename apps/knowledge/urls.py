"""Knowledge REST endpoints; the project includes these under `/api/`."""

from django.urls import path

from apps.knowledge.api import KnowledgeSearchView

app_name = "knowledge"

urlpatterns = [
    path("knowledge/search/", KnowledgeSearchView.as_view(), name="search"),
]

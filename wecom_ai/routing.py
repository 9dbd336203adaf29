from django.urls import path

from apps.audit.consumers import FlaggedFeedConsumer
from apps.bots.consumers import TurnStreamConsumer
from apps.knowledge.consumers import DocumentProgressConsumer

websocket_urlpatterns = [
    path("ws/turns/<int:turn_id>/", TurnStreamConsumer.as_asgi()),
    path("ws/knowledge/documents/<int:document_id>/", DocumentProgressConsumer.as_asgi()),
    path("ws/audit/flagged/", FlaggedFeedConsumer.as_asgi()),
]

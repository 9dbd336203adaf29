from django.urls import path

from apps.bots.consumers import TurnStreamConsumer

websocket_urlpatterns = [
    path("ws/turns/<int:turn_id>/", TurnStreamConsumer.as_asgi()),
]

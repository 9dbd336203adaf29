"""ASGI entry point: HTTP through Django, WebSockets (live turn streams) through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wecom_ai.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from wecom_ai.body_limit import BodySizeLimitMiddleware  # noqa: E402
from wecom_ai.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Oversized bodies are refused here, before Django spools them to disk.
        "http": BodySizeLimitMiddleware(
            django_asgi_app,
            default=settings.REQUEST_BODY_MAX_BYTES,
            limits=[
                ("/wecom/", settings.WECOM_CALLBACK_MAX_BYTES),
                ("/wechat/", settings.WECOM_CALLBACK_MAX_BYTES),
            ],
        ),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

"""`/metrics` for Prometheus: the processes' samples plus the database's state.

Refused unless the caller shows `METRICS_TOKEN` as a bearer token or comes from
`METRICS_ALLOWED_NETWORKS`; with neither configured it is closed to everyone, since the
figures name bots, model profiles and archive sources.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from apps.monitoring.collectors import DatabaseCollector
from wecom_ai.throttling import client_ip

logger = logging.getLogger(__name__)


def _token_matches(request: HttpRequest) -> bool:
    token: str = settings.METRICS_TOKEN
    scheme, _space, presented = request.headers.get("Authorization", "").partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(presented.strip().encode(), token.encode())
    )


def _network_allowed(request: HttpRequest) -> bool:
    networks = settings.METRICS_ALLOWED_NETWORKS
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(client_ip(request))
    except ValueError:
        return False
    return any(address in network for network in networks)


def metrics_allowed(request: HttpRequest) -> bool:
    return _token_matches(request) or _network_allowed(request)


def process_samples() -> bytes:
    """Every process's samples when they share a multiprocess directory, else this one's."""
    if settings.METRICS_MULTIPROC_DIR:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=settings.METRICS_MULTIPROC_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def database_samples() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return generate_latest(registry)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not metrics_allowed(request):
        logger.warning("metrics refused for %s", client_ip(request))
        response = HttpResponse(
            _("Metrics need the bearer token or an allowed address."),
            status=401 if settings.METRICS_TOKEN else 403,
            content_type="text/plain; charset=utf-8",
        )
        if settings.METRICS_TOKEN:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(process_samples() + database_samples(), content_type=CONTENT_TYPE_LATEST)

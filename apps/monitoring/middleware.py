"""Every request's latency into `wecomai_http_request_duration_seconds`, by URL name.

The outermost middleware, so an ack's time includes everything Django does for it. The
route label is the URL pattern's name (bounded by the URLconf), never the raw path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from apps.core.metrics import HTTP_REQUEST_SECONDS

UNMATCHED = "unmatched"


def route_name(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return (match.view_name or UNMATCHED) if match is not None else UNMATCHED


class RequestMetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        HTTP_REQUEST_SECONDS.labels(
            route_name(request), request.method or "", str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response

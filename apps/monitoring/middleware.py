"""Every request's latency into `wecomai_http_request_duration_seconds`, by URL name.

The outermost middleware, so an ack's time includes everything Django does for it. The
route label is the URL pattern's name (bounded by the URLconf), never the raw path.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from apps.core.metrics import HTTP_REQUEST_SECONDS

UNMATCHED = "unmatched"


def route_name(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    return (match.view_name or UNMATCHED) if match is not None else UNMATCHED


class RequestMetricsMiddleware:
    """Async-capable: a sync-only one would hold each ASGI request on a thread of its own."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        _observe(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = await self.get_response(request)
        _observe(request, response, started)
        return response


def _observe(request: HttpRequest, response: HttpResponse, started: float) -> None:
    HTTP_REQUEST_SECONDS.labels(
        route_name(request), request.method or "", str(response.status_code)
    ).observe(time.perf_counter() - started)

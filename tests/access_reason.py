"""Opening a scoped record the way a browser does: the reason is POSTed, then the page opens."""

from __future__ import annotations

from django.http import HttpResponse
from django.test import Client

REASON = {"reason": "工单 #4711 合规抽查"}


def open_with_reason(client: Client, url: str, reason: str = REASON["reason"]) -> HttpResponse:
    """POST the reason form (as its hidden field marks it) and follow the redirect."""
    return client.post(url, {"_access_reason": "1", "reason": reason}, follow=True)

"""The product's URLs, with the WeCom callback routed to the sync view (bench only)."""

from django.urls import path

from apps.bots import views
from wecom_ai.urls import urlpatterns as product_urlpatterns

urlpatterns = [
    path("wecom/aibot/<slug:slug>/callback", views.callback_sync, name="bench-sync-callback"),
    *product_urlpatterns,
]

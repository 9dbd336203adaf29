"""Mini-program endpoints; the project includes these under `/api/mp/`."""

from django.urls import path

from apps.wechat import api

app_name = "miniprogram"
urlpatterns = [
    path("login", api.LoginView.as_view(), name="login"),
    path("token/refresh", api.RefreshView.as_view(), name="token-refresh"),
    path("chat", api.ChatView.as_view(), name="chat"),
]

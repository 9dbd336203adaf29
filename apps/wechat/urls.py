from django.urls import path

from apps.wechat import views

app_name = "wechat"
urlpatterns = [
    path("mp/<slug:slug>/callback", views.mp_callback, name="mp-callback"),
]

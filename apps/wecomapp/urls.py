from django.urls import path

from apps.wecomapp import views

app_name = "wecomapp"
urlpatterns = [
    path("app/<slug:slug>/callback", views.callback, name="callback"),
]

from django.urls import path

from apps.bots import views

app_name = "bots"
urlpatterns = [
    path("aibot/<slug:slug>/callback", views.callback, name="callback"),
]

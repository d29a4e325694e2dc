from django.urls import path

from billing import api

app_name = "billing-api"
urlpatterns = [
    path("usage/", api.UsageApi.as_view(), name="usage"),
]

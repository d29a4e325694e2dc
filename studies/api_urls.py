from django.urls import path  # noqa: F401

app_name = "studies-api"
urlpatterns: list = []

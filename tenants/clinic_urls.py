"""Pages inside a clinic: /c/<clinic_slug>/..."""

from django.urls import path

from tenants import views

app_name = "clinic"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]

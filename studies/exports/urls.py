"""Clinic export pages, under /c/<clinic_slug>/exports/."""

from django.urls import path

from studies.exports import views

app_name = "exports"
urlpatterns = [
    path("", views.export_list, name="list"),
    path("new/", views.export_request, name="request"),
    path("<uuid:export_uuid>/", views.export_detail, name="detail"),
    path("<uuid:export_uuid>/parts/<int:number>/", views.export_part_download, name="part"),
]

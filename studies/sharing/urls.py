"""Clinic pages for share and upload links, under /c/<clinic_slug>/shares/."""

from django.urls import path

from studies.sharing import views

app_name = "sharing"
urlpatterns = [
    path("", views.share_list, name="list"),
    path("new/", views.share_create, name="create"),
    path("<uuid:share_uuid>/", views.share_detail, name="detail"),
    path("<uuid:share_uuid>/revoke/", views.share_revoke, name="revoke"),
    path("<uuid:share_uuid>/extend/", views.share_extend, name="extend"),
    path("upload-links/", views.upload_link_create, name="upload-link-create"),
    path("upload-links/<uuid:link_uuid>/revoke/", views.upload_link_revoke, name="upload-link-revoke"),
]

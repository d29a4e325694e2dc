"""What link recipients open, without an account: /s/<token>/..., /access/, /u/<token>/..."""

from django.urls import path

from studies.sharing import public_views, upload_link_views

app_name = "share"
urlpatterns = [
    path("s/<str:share_token>/", public_views.share_open, name="open"),
    path("s/<str:share_token>/studies/<uuid:study_uuid>/", public_views.share_viewer, name="viewer"),
    path("s/<str:share_token>/studies/<uuid:study_uuid>/download/", public_views.share_download, name="download"),
    path("access/", public_views.access_code, name="access"),
    path("u/<str:link_token>/", upload_link_views.upload_link_page, name="upload"),
    path("u/<str:link_token>/files/", upload_link_views.upload_link_file, name="upload-file"),
]

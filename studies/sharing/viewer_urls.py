"""The diagnostic viewer (OHIF) of a share link, under /s/<share_token>/viewer/."""

from django.urls import path

from studies.sharing import viewer_views as views

app_name = "share-viewer"
urlpatterns = [
    path("<uuid:study_uuid>/ohif/", views.share_study_ohif, name="study-ohif"),
    path("ohif/", views.ohif_share, name="ohif"),
    path("ohif/<path:path>", views.ohif_share, name="ohif-path"),
]

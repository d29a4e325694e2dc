"""The study viewers, under /c/<clinic_slug>/viewer/: the light viewer page and the diagnostic viewer (OHIF)."""

from django.urls import path

from studies.viewer import views

app_name = "viewer"
urlpatterns = [
    path("<uuid:study_uuid>/", views.study_viewer, name="study"),
    path("<uuid:study_uuid>/ohif/", views.study_ohif, name="study-ohif"),
    path("ohif/", views.ohif_clinic, name="ohif"),
    path("ohif/<path:path>", views.ohif_clinic, name="ohif-path"),
]

"""Anonymization pages under /c/<clinic_slug>/anonymize/."""

from django.urls import path

from studies.anonymize import views

app_name = "anonymize"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("projects/", views.project_create, name="project-create"),
    path("projects/<uuid:project_uuid>/", views.project_detail, name="project"),
    path("studies/<uuid:study_uuid>/", views.study_anonymize, name="study"),
    path("jobs/<uuid:job_uuid>/", views.job_detail, name="job"),
]

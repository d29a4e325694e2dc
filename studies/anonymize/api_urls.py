from django.urls import path

from studies.anonymize import api

app_name = "anonymize-api"
urlpatterns = [
    path("anonymizations/", api.AnonymizationListApi.as_view(), name="list"),
    path("anonymizations/<uuid:job_id>/", api.AnonymizationDetailApi.as_view(), name="detail"),
]

"""REST resources of the studies app under /api/v1/clinics/<clinic_slug>/."""

from django.urls import path

from studies.backup import views as backup_views
from studies.browse import api
from studies.dimse import api as dimse_api
from studies.ingest import api as upload_api

app_name = "studies-api"
urlpatterns = [
    path("studies/", api.StudyListApi.as_view(), name="study-list"),
    path("studies/<str:study_uid>/", api.StudyDetailApi.as_view(), name="study-detail"),
    path("backup/", backup_views.BackupApi.as_view(), name="backup"),
    path("uploads/", upload_api.UploadListApi.as_view(), name="uploads"),
    path("uploads/<uuid:batch_id>/", upload_api.UploadDetailApi.as_view(), name="upload-detail"),
    path("dicom-nodes/", dimse_api.DicomNodeListApi.as_view(), name="dicom-node-list"),
    path("dicom-nodes/<uuid:node_uuid>/", dimse_api.DicomNodeDetailApi.as_view(), name="dicom-node-detail"),
]

"""Clinic pages of the studies app, under /c/<clinic_slug>/."""

from django.urls import path

from studies.backup import views as backup_views
from studies.browse import views
from studies.dimse import views as dimse_views
from studies.ingest import views as upload_views

app_name = "studies"
urlpatterns = [
    path("studies/", views.study_list, name="list"),
    path("studies/trash/", views.trash, name="trash"),
    path("studies/quarantine/", views.quarantine_page, name="quarantine"),
    path("studies/quarantine/<uuid:held_uuid>/", views.quarantine_resolve, name="quarantine-resolve"),
    path("studies/<uuid:study_uuid>/", views.study_detail, name="detail"),
    path("studies/<uuid:study_uuid>/download/", views.study_download, name="download"),
    path("studies/<uuid:study_uuid>/delete/", views.study_delete, name="delete"),
    path("studies/<uuid:study_uuid>/restore/", views.study_restore, name="restore"),
    path("studies/<uuid:study_uuid>/series/<uuid:series_uuid>/download/", views.series_download,
         name="series-download"),
    path("studies/<uuid:study_uuid>/series/<uuid:series_uuid>/thumbnail.png", views.series_thumbnail,
         name="series-thumbnail"),
    path("backup/", backup_views.backup_page, name="backup"),
    path("dicom-nodes/", dimse_views.dicom_node_list, name="dicom-nodes"),
    path("dicom-nodes/<uuid:node_uuid>/delete/", dimse_views.dicom_node_delete, name="dicom-node-delete"),
    path("upload/", upload_views.upload_page, name="upload"),
    path("upload/files/", upload_views.upload_file, name="upload-file"),
    path("upload/batches/<uuid:batch_uuid>/", upload_views.upload_batch, name="upload-batch"),
]

"""Outbound DICOM pages under /c/<clinic_slug>/outbound/."""

from django.urls import path

from studies.outbound import views

app_name = "outbound"
urlpatterns = [
    path("send/<uuid:study_uuid>/", views.study_send, name="study-send"),
    path("sends/<uuid:send_uuid>/", views.send_detail, name="send"),
    path("migrations/", views.migration_list, name="migrations"),
    path("migrations/<uuid:migration_uuid>/", views.migration_detail, name="migration"),
    path("routing/", views.routing_rules, name="routing"),
    path("routing/<uuid:rule_uuid>/delete/", views.routing_rule_delete, name="routing-rule-delete"),
]

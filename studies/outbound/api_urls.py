from django.urls import path

from studies.outbound import api

app_name = "outbound-api"
urlpatterns = [
    path("studies/<str:study_uid>/send/", api.StudySendApi.as_view(), name="study-send"),
    path("sends/<uuid:send_id>/", api.SendDetailApi.as_view(), name="send-detail"),
    path("migrations/", api.MigrationListApi.as_view(), name="migration-list"),
    path("migrations/<uuid:migration_id>/", api.MigrationDetailApi.as_view(), name="migration-detail"),
    path("routing-rules/", api.RoutingRuleListApi.as_view(), name="routing-rule-list"),
    path("routing-rules/<uuid:rule_id>/", api.RoutingRuleDetailApi.as_view(), name="routing-rule-detail"),
]

"""Pages inside a clinic: /c/<clinic_slug>/..."""

from django.urls import path

from tenants import audit_views, views

app_name = "clinic"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("members/", views.members, name="members"),
    path("members/invite/", views.invitation_create, name="invitation-create"),
    path("members/invitations/<uuid:invitation_uuid>/revoke/", views.invitation_revoke, name="invitation-revoke"),
    path("members/<uuid:user_uuid>/role/", views.member_role, name="member-role"),
    path("members/<uuid:user_uuid>/remove/", views.member_remove, name="member-remove"),
    path("security/", views.security, name="security"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<uuid:token_uuid>/revoke/", views.token_revoke, name="token-revoke"),
    path("audit/", audit_views.audit_log, name="audit"),
    path("audit/csv/", audit_views.audit_export_csv, name="audit-csv"),
    path("audit/fhir/", audit_views.audit_export_fhir, name="audit-fhir"),
]

from django.urls import path

from tenants import api, audit_views

app_name = "tenants-api"
urlpatterns: list = [
    path("members/", api.MemberListApi.as_view(), name="members"),
    path("members/<uuid:user_uuid>/", api.MemberDetailApi.as_view(), name="member"),
    path("invitations/", api.InvitationListApi.as_view(), name="invitations"),
    path("invitations/<uuid:invitation_uuid>/", api.InvitationDetailApi.as_view(), name="invitation"),
    path("tokens/", api.TokenListApi.as_view(), name="tokens"),
    path("tokens/<uuid:token_uuid>/", api.TokenDetailApi.as_view(), name="token"),
    path("audit/", audit_views.AuditEventListApi.as_view(), name="audit"),
]

"""REST API routes under /api/v1/; each app adds its own clinic-scoped resources."""

from django.urls import include, path

urlpatterns = [
    path("clinics/<slug:clinic_slug>/", include("tenants.api_urls")),
    path("clinics/<slug:clinic_slug>/", include("studies.api_urls")),
    path("clinics/<slug:clinic_slug>/", include("billing.api_urls")),
    path("clinics/<slug:clinic_slug>/", include("studies.anonymize.api_urls")),
    path("clinics/<slug:clinic_slug>/", include("studies.sharing.api_urls")),
    path("clinics/<slug:clinic_slug>/", include("studies.outbound.api_urls")),
]

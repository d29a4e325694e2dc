"""Top-level routes. Every clinic-scoped route carries <clinic_slug>; see tenants.middleware."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from billing import views as billing_views
from portal import health
from tenants import views as tenant_views

urlpatterns = [
    path("", tenant_views.home, name="home"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("accounts/", include("tenants.urls")),
    path("c/<slug:clinic_slug>/", include("tenants.clinic_urls")),
    path("c/<slug:clinic_slug>/", include("studies.urls")),
    path("c/<slug:clinic_slug>/billing/", include("billing.urls")),
    path("c/<slug:clinic_slug>/anonymize/", include("studies.anonymize.urls")),
    path("c/<slug:clinic_slug>/shares/", include("studies.sharing.urls")),
    path("c/<slug:clinic_slug>/viewer/", include("studies.viewer.urls")),
    path("c/<slug:clinic_slug>/outbound/", include("studies.outbound.urls")),
    path("s/<str:share_token>/dicomweb/", include("studies.sharing.dicomweb_urls")),
    path("s/<str:share_token>/viewer/", include("studies.viewer.share_urls")),
    path("", include("studies.sharing.public_urls")),
    path("billing/stripe/webhook/", billing_views.stripe_webhook, name="stripe-webhook"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("portal.api_urls")),
    path("dicomweb/<slug:clinic_slug>/", include("studies.dicomweb.urls")),
    path("admin/", admin.site.urls),
]

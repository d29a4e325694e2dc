"""Top-level routes. Every clinic-scoped route carries <clinic_slug>; see tenants.middleware."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from billing import views as billing_views
from portal import health
from tenants import views as tenant_views


def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    # Browsers ask for /favicon.ico whatever the page says; the file itself is a (hashed) static file.
    return HttpResponsePermanentRedirect(static("portal/favicon.ico"))


urlpatterns = [
    path("", tenant_views.home, name="home"),
    path("favicon.ico", favicon),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    # Early: a viewer's DICOMweb requests are the most frequent, and each pattern before them is tried first.
    path("dicomweb/<slug:clinic_slug>/", include("studies.dicomweb.urls")),
    path("accounts/", include("tenants.urls")),
    path("c/<slug:clinic_slug>/", include("tenants.clinic_urls")),
    path("c/<slug:clinic_slug>/", include("studies.urls")),
    path("c/<slug:clinic_slug>/billing/", include("billing.urls")),
    path("c/<slug:clinic_slug>/anonymize/", include("studies.anonymize.urls")),
    path("c/<slug:clinic_slug>/shares/", include("studies.sharing.urls")),
    path("c/<slug:clinic_slug>/viewer/", include("studies.viewer.urls")),
    path("c/<slug:clinic_slug>/outbound/", include("studies.outbound.urls")),
    path("c/<slug:clinic_slug>/exports/", include("studies.exports.urls")),
    path("s/<str:share_token>/dicomweb/", include("studies.sharing.dicomweb_urls")),
    path("s/<str:share_token>/viewer/", include("studies.sharing.viewer_urls")),
    path("", include("studies.sharing.public_urls")),
    path("billing/stripe/webhook/", billing_views.stripe_webhook, name="stripe-webhook"),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/v1/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("portal.api_urls")),
    path("admin/", admin.site.urls),
]

handler400 = "portal.errors.bad_request"
handler403 = "portal.errors.permission_denied"
handler404 = "portal.errors.page_not_found"
handler500 = "portal.errors.server_error"

"""portal.csp: the Content-Security-Policy headers are django-csp's, the site policy built once."""

from __future__ import annotations

from csp.constants import HEADER
from csp.utils import build_policy
from django.http import HttpResponse

from portal.csp import CSPMiddleware
from tests.factories import token_for


def _through_middleware(request, response):
    middleware = CSPMiddleware(lambda r: response)
    return middleware(request)


def test_a_dicomweb_answer_carries_the_site_policy(client, clinic):
    response = client.get(f"/dicomweb/{clinic.slug}/studies", HTTP_AUTHORIZATION=f"Bearer {token_for(clinic)}")

    assert response[HEADER] == build_policy()
    assert "frame-ancestors 'none'" in response[HEADER]


def test_a_changed_policy_setting_is_used_at_once(rf, settings):
    _through_middleware(rf.get("/"), HttpResponse())
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": ["'none'"]}}

    response = _through_middleware(rf.get("/"), HttpResponse())

    assert response[HEADER] == "default-src 'none'"


def test_a_view_that_updates_the_policy_gets_its_update(rf):
    page = HttpResponse()
    page._csp_update = {"img-src": ["blob:"]}

    response = _through_middleware(rf.get("/"), page)

    assert response[HEADER] == build_policy(update={"img-src": ["blob:"]})
    assert "blob:" in response[HEADER]


def test_a_page_that_uses_a_nonce_gets_django_csps_header_for_it(rf):
    request = rf.get("/")
    middleware = CSPMiddleware(lambda r: HttpResponse(str(r.csp_nonce)))

    response = middleware(request)

    # The site's policy names no nonce placeholder: django-csp's own answer for that nonce.
    assert response[HEADER] == build_policy(nonce=response.content.decode())


def test_an_exempt_response_gets_no_policy(rf):
    page = HttpResponse()
    page._csp_exempt = True

    assert HEADER not in _through_middleware(rf.get("/"), page)

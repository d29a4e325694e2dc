"""The product's own error answers: JSON on /api/ and /dicomweb/, styled pages elsewhere, even with DEBUG on."""

from __future__ import annotations

import logging
from http import HTTPStatus

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[False, True], ids=["debug-off", "debug-on"])
def debug(request, settings):
    settings.DEBUG = request.param
    return request.param


def test_api_answers_json_404_for_another_clinics_url(client, owner, other_clinic, debug):
    client.force_login(owner)

    response = client.get(f"/api/v1/clinics/{other_clinic.slug}/studies/")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "not_found"


def test_dicomweb_answers_json_404_for_another_clinics_url(client, owner, other_clinic, debug):
    client.force_login(owner)

    response = client.get(f"/dicomweb/{other_clinic.slug}/studies")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.json()["error"] == "not_found"


def test_unknown_api_path_answers_json_404(client, owner, debug):
    client.force_login(owner)

    response = client.get("/api/v1/no-such-thing/")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.json()["message"]


def test_unknown_page_is_the_product_page_not_djangos_technical_one(client, owner, debug):
    client.force_login(owner)

    response = client.get("/nowhere/")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert b"This page does not exist" in response.content
    assert b"URL patterns" not in response.content


def test_technical_pages_can_be_asked_for_while_developing(client, owner, settings):
    settings.DEBUG = True
    settings.TECHNICAL_ERROR_PAGES = True
    client.force_login(owner)

    response = client.get("/nowhere/")

    assert b"URL patterns" in response.content


def test_missing_trailing_slash_still_redirects(client, owner, clinic, debug):
    client.force_login(owner)

    response = client.get(f"/c/{clinic.slug}/studies")

    assert response.status_code == HTTPStatus.MOVED_PERMANENTLY


def test_forbidden_is_logged_as_one_line_without_traceback(client, clinic, uploader, caplog):
    client.force_login(uploader)

    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.get(f"/c/{clinic.slug}/members/")

    assert response.status_code == HTTPStatus.FORBIDDEN
    records = [r for r in caplog.records if r.name == "django.request"]
    assert len(records) == 1
    assert records[0].exc_info is None
    assert "Traceback" not in caplog.text


@pytest.mark.urls("tests.error_urls")
@pytest.mark.parametrize("path", ["/boom/", "/api/boom/"])
def test_server_error_is_the_product_answer_and_is_logged(client, owner, debug, path, caplog):
    client.raise_request_exception = False
    client.force_login(owner)

    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = client.get(path)

    assert response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
    if path.startswith("/api/"):
        assert response.json()["error"] == "server_error"
    else:
        assert b"Something went wrong on our side" in response.content
    assert any(r.exc_info for r in caplog.records if r.name == "django.request")


def test_a_form_without_its_csrf_token_gets_the_product_page(owner, clinic):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)

    response = client.post(f"/c/{clinic.slug}/shares/new/")

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert b"This form has expired" in response.content

"""The OpenAPI schema and its interactive documentation, served by the app with no outside host."""

from __future__ import annotations

import re
from http import HTTPStatus

import pytest

DOCS_URL = "/api/v1/docs/"

pytestmark = pytest.mark.django_db


def test_docs_page_references_no_external_host(client):
    response = client.get(DOCS_URL)

    assert response.status_code == HTTPStatus.OK
    page = response.content.decode()
    # Absolute URLs (http://, https://, protocol-relative //host) would mean a CDN or another service.
    assert not re.search(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", page, re.IGNORECASE), page
    assert "swagger-ui-bundle.js" in page
    # The set-up script is a file of its own (no inline script, for the Content-Security-Policy).
    script = client.get(DOCS_URL + "?script=")
    assert "<script>" not in page
    assert '"validatorUrl": null' in script.content.decode()
    assert not re.search(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}""", script.content.decode(), re.IGNORECASE)


def test_docs_assets_are_served_by_the_app(client):
    page = client.get(DOCS_URL).content.decode()
    assets = re.findall(r"""(?:src|href)="([^"]+)\"""", page)

    responses = {asset: client.get(asset) for asset in assets}

    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
    assert all(asset.startswith(("/static/", DOCS_URL + "?script=")) for asset in assets), assets
    assert {asset: r.status_code for asset, r in responses.items()} == {asset: HTTPStatus.OK for asset in assets}


def test_schema_is_served_and_names_the_upload_endpoint(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == HTTPStatus.OK
    paths = response.json()["paths"]
    assert "/api/v1/clinics/{clinic_slug}/uploads/" in paths
    assert "multipart/form-data" in paths["/api/v1/clinics/{clinic_slug}/uploads/"]["post"]["requestBody"]["content"]

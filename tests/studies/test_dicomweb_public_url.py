"""Absolute URLs in DICOMweb answers come from PUBLIC_BASE_URL, never from a forged Host header."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from pydicom.uid import generate_uid

from tests.dicom_files import write_instance
from tests.factories import ingest_files, token_for

BASE = "/dicomweb/clinic-a/"
PUBLIC = "https://pacs.example.org"


@pytest.fixture(autouse=True)
def _fresh_cache():
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def study_uid(clinic, tmp_path):
    uid = generate_uid()
    ingest_files(clinic, [write_instance(tmp_path, study_uid=uid, series_uid=generate_uid())])
    return uid


@pytest.fixture
def api(client, clinic):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"
    return client


@pytest.fixture
def public_base(settings):
    settings.PUBLIC_BASE_URL = PUBLIC
    # A proxy that passes any Host through: the answer must still not echo it.
    settings.ALLOWED_HOSTS = ["*"]


def test_bulk_data_uri_uses_the_public_base_url_whatever_the_host_header(api, study_uid, public_base):
    response = api.get(f"{BASE}studies/{study_uid}/metadata", HTTP_HOST="evil.example")

    uri = response.json()[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{PUBLIC}{BASE}studies/{study_uid}/series/")
    assert "evil.example" not in response.content.decode()


def test_retrieve_url_uses_the_public_base_url_whatever_the_host_header(api, study_uid, public_base):
    response = api.get(f"{BASE}studies", {"StudyInstanceUID": study_uid}, HTTP_HOST="evil.example:8443")

    [study] = response.json()
    assert study["00081190"]["Value"] == [f"{PUBLIC}{BASE}studies/{study_uid}"]


def test_default_run_builds_urls_from_the_request(api, study_uid, settings):
    settings.PUBLIC_BASE_URL = ""

    response = api.get(f"{BASE}studies", {"StudyInstanceUID": study_uid})

    assert response.json()[0]["00081190"]["Value"] == [f"http://testserver{BASE}studies/{study_uid}"]


def test_outsider_gets_404_and_no_urls(client, other_clinic, study_uid, public_base):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(other_clinic)}"

    response = client.get(f"{BASE}studies/{study_uid}/metadata")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert PUBLIC not in response.content.decode()

"""Server errors the schema-driven API fuzz run (tests/test_api_fuzz.py) found, pinned as plain tests.

Each input used to reach PostgreSQL unchecked and fail there with a 500; now it answers 4xx (or is capped).
"""

from __future__ import annotations

import io
import zipfile
from http import HTTPStatus

import pytest

from studies.models import UploadBatch
from studies.sharing.models import Share
from tenants import services as tenant_services
from tenants.models import Clinic, Invitation
from tenants.roles import Role
from tests.factories import make_study

HUGE = "99999999999999999999"


def api(clinic: Clinic, path: str) -> str:
    return f"/api/v1/clinics/{clinic.slug}/{path}"


@pytest.fixture
def headers(clinic) -> dict[str, str]:
    secret = tenant_services.api_token_create(clinic=clinic, name="owner token", role=Role.OWNER).secret
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


@pytest.fixture
def study(clinic):
    return make_study(clinic=clinic, study_instance_uid="1.2.840.99.7")


def test_a_huge_study_search_limit_is_capped(client, clinic, headers, study):
    response = client.get(api(clinic, "studies/"), {"limit": HUGE}, **headers)

    assert response.status_code == HTTPStatus.OK
    assert response.json()["count"] == 1


def test_a_huge_audit_limit_is_capped(client, clinic, headers):
    response = client.get(api(clinic, "audit/"), {"limit": HUGE}, **headers)

    assert response.status_code == HTTPStatus.OK


def test_a_study_uid_with_a_nul_byte_is_404(client, clinic, headers, study):
    response = client.get(api(clinic, "studies/1.2.840.99.7%00/"), **headers)

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert response.json()["error"] == "not_found"


def test_a_share_with_a_huge_max_opens_is_refused(client, clinic, headers, study):
    body = {"studies": [study.study_instance_uid], "max_opens": int(HUGE)}

    response = client.post(api(clinic, "shares/"), body, content_type="application/json", **headers)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "max_opens" in response.json()["fields"]
    assert not Share.objects.exists()


def test_a_share_with_an_overlong_recipient_address_is_refused(client, clinic, headers, study):
    body = {"studies": [study.study_instance_uid], "recipient_email": "a" * 250 + "@example.org"}

    response = client.post(api(clinic, "shares/"), body, content_type="application/json", **headers)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not Share.objects.exists()


def test_an_invitation_with_an_overlong_address_is_refused(client, clinic, headers):
    body = {"email": "a" * 250 + "@example.org", "role": Role.CLINICIAN}

    response = client.post(api(clinic, "invitations/"), body, content_type="application/json", **headers)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "email" in response.json()["fields"]
    assert not Invitation.objects.exists()


def test_an_archive_whose_path_holds_a_nul_byte_is_queued_under_a_clean_name(client, clinic, headers):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("README.TXT", b"Viewer instructions")
    archive.seek(0)
    archive.name = "cd.zip"

    response = client.post(api(clinic, "uploads/"), {"file": archive, "path": "CD\x00.zip"}, **headers)

    assert response.status_code == HTTPStatus.ACCEPTED
    assert UploadBatch.objects.for_clinic(clinic).get().archive_name == "CD.zip"

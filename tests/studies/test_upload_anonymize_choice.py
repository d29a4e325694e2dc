"""Who may choose an anonymization project when uploading.

Choosing one is an anonymize decision, so it needs the anonymize right (owner, admin, clinician). An
uploader's upload, and an upload link's, follows the anonymize-on-ingest rules the clinic set: the link's
own project, the token's rule, the clinic-wide rule, or none.
"""

from __future__ import annotations

import io
import zipfile
from http import HTTPStatus

import pydicom

from studies.anonymize import services
from studies.archive import stores
from studies.models import Instance, Study, UploadBatch
from studies.sharing import services as sharing
from tenants import services as tenant_services
from tenants.roles import Role
from tests.dicom_files import PYDICOM_SAMPLES as SAMPLES

CT = SAMPLES / "CT_small.dcm"
ORIGINAL_NAME = str(pydicom.dcmread(CT).PatientName)


def page_upload(client, clinic, project, body=None):
    return client.post(f"/c/{clinic.slug}/upload/files/", {
        "file": body or io.BytesIO(CT.read_bytes()), "anonymize_project": str(project.uuid)})


def api_upload(client, clinic, project, role):
    secret = tenant_services.api_token_create(clinic=clinic, name=f"{role} token", role=role).secret
    return client.post(f"/api/v1/clinics/{clinic.slug}/uploads/",
                       {"file": io.BytesIO(CT.read_bytes()), "anonymize_project": str(project.uuid)},
                       HTTP_AUTHORIZATION=f"Bearer {secret}")


def nothing_stored(clinic) -> bool:
    primary = list(stores.get_store("primary").list(f"clinics/{clinic.uuid}/objects/"))
    return not Instance.objects.exists() and not UploadBatch.objects.exists() and not primary


def lenient(clinic):
    return services.project_create(clinic=clinic, name="Keeps UIDs", pseudonym_prefix="K",
                                   options=["retain_uids", "retain_long_full_dates"])


def test_uploader_cannot_choose_a_project_on_the_upload_page(client, clinic, uploader):
    project = lenient(clinic)
    client.force_login(uploader)

    response = page_upload(client, clinic, project)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert response.json()["outcome"] == "rejected"
    assert "anonymization project" in response.json()["reason"]
    assert nothing_stored(clinic)


def test_uploader_cannot_choose_a_project_for_an_archive(client, clinic, uploader, tmp_path):
    project = lenient(clinic)
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(CT, "DICOM/IMG0001")
    client.force_login(uploader)

    with archive.open("rb") as fileobj:
        response = page_upload(client, clinic, project, body=fileobj)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert nothing_stored(clinic)


def test_uploader_token_cannot_choose_a_project_via_the_api(client, clinic):
    project = lenient(clinic)

    response = api_upload(client, clinic, project, Role.UPLOADER)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert "anonymization project" in response.json()["reason"]
    assert nothing_stored(clinic)


def test_upload_link_sender_cannot_replace_the_links_project(client, clinic, owner):
    fixed = services.project_create(clinic=clinic, name="Registry", pseudonym_prefix="REG")
    other = lenient(clinic)
    created = sharing.upload_link_create(clinic=clinic, created_by=owner, anonymize_project=fixed)

    response = client.post(f"/u/{created.token}/files/", {
        "file": io.BytesIO(CT.read_bytes()), "anonymize_project": str(other.uuid)})

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert nothing_stored(clinic)


def test_uploaders_page_offers_no_project_choice(client, clinic, uploader):
    lenient(clinic)
    client.force_login(uploader)

    page = client.get(f"/c/{clinic.slug}/upload/")

    assert page.status_code == HTTPStatus.OK
    assert b"anonymize-project" not in page.content


def test_clinic_wide_rule_still_applies_to_an_uploader(client, clinic, uploader):
    project = services.project_create(clinic=clinic, name="Registry", pseudonym_prefix="REG")
    services.ingest_rules_set(project=project, clinic_wide=True, api_tokens=[], dicom_nodes=[])
    client.force_login(uploader)

    response = client.post(f"/c/{clinic.slug}/upload/files/", {"file": io.BytesIO(CT.read_bytes())})

    assert response.status_code == HTTPStatus.CREATED
    assert Study.objects.for_clinic(clinic).get().patient.patient_name == "REG-0001"


def test_clinician_chooses_a_project_on_the_upload_page(client, clinic, clinician):
    project = services.project_create(clinic=clinic, name="Registry", pseudonym_prefix="REG")
    client.force_login(clinician)

    page = client.get(f"/c/{clinic.slug}/upload/")
    response = page_upload(client, clinic, project)

    assert b"anonymize-project" in page.content
    assert response.status_code == HTTPStatus.CREATED
    assert Study.objects.for_clinic(clinic).get().patient.patient_name == "REG-0001"


def test_admin_token_chooses_a_project_via_the_api(client, clinic):
    project = services.project_create(clinic=clinic, name="Registry", pseudonym_prefix="REG")

    response = api_upload(client, clinic, project, Role.ADMIN)

    assert response.status_code == HTTPStatus.CREATED
    assert Study.objects.for_clinic(clinic).get().patient.patient_name == "REG-0001"

"""REST upload: POST /api/v1/clinics/<clinic>/uploads/ answers like the upload page, naming studies by UID."""

from __future__ import annotations

import zipfile
from http import HTTPStatus
from pathlib import Path

from studies.ingest import tasks
from studies.models import Instance, Study, UploadBatch
from tenants import services as tenant_services
from tenants.models import Clinic
from tenants.roles import Role
from tests.dicom_files import write_ct


def uploads_url(clinic: Clinic) -> str:
    return f"/api/v1/clinics/{clinic.slug}/uploads/"


def bearer(clinic: Clinic, role: str) -> dict[str, str]:
    secret = tenant_services.api_token_create(clinic=clinic, name=f"{role} token", role=role).secret
    return {"HTTP_AUTHORIZATION": f"Bearer {secret}"}


def post_file(client, clinic: Clinic, path: Path, **headers: str):
    with path.open("rb") as fileobj:
        return client.post(uploads_url(clinic), {"file": fileobj}, **headers)


def test_uploader_uploads_a_file_and_gets_its_study_instance_uid(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    path = write_ct(tmp_path / "ct.dcm", study_uid="1.2.826.0.1.3680043.8.498.77")

    response = post_file(client, clinic, path)

    assert response.status_code == HTTPStatus.CREATED
    assert response.json() == {"outcome": "stored", "reason": "", "study": "1.2.826.0.1.3680043.8.498.77"}
    assert Study.objects.for_clinic(clinic).get().study_instance_uid == "1.2.826.0.1.3680043.8.498.77"
    assert Instance.objects.for_clinic(clinic).get().size_bytes == path.stat().st_size


def test_api_token_with_the_upload_role_uploads_without_a_session(client, clinic, tmp_path):
    headers = bearer(clinic, Role.UPLOADER)

    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"), **headers)

    assert response.status_code == HTTPStatus.CREATED
    assert response.json()["outcome"] == "stored"
    assert response.json()["study"] == Study.objects.for_clinic(clinic).get().study_instance_uid


def test_second_upload_of_the_same_file_is_already_present(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    path = write_ct(tmp_path / "ct.dcm", study_uid="1.2.826.0.1.3680043.8.498.78")
    post_file(client, clinic, path)

    response = post_file(client, clinic, path)

    assert response.status_code == HTTPStatus.OK
    assert response.json()["outcome"] == "already_present"
    assert response.json()["study"] == "1.2.826.0.1.3680043.8.498.78"
    assert Instance.objects.count() == 1


def test_non_dicom_file_is_skipped_and_nothing_stored(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not an image")

    response = post_file(client, clinic, path)

    assert response.status_code == HTTPStatus.OK
    assert response.json()["outcome"] == "skipped"
    assert response.json()["reason"]
    assert "study" not in response.json()
    assert not Instance.objects.exists()


def test_post_without_a_file_is_rejected_with_a_reason(client, clinic, uploader):
    client.force_login(uploader)

    response = client.post(uploads_url(clinic), {"path": "a.dcm"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["outcome"] == "rejected"
    assert "'file'" in response.json()["reason"]


def test_upload_over_quota_is_rejected_with_507(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=100)

    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"))

    assert response.status_code == HTTPStatus.INSUFFICIENT_STORAGE
    assert response.json()["outcome"] == "rejected"
    assert not Instance.objects.exists()


def test_billing_admin_gets_403_and_nothing_is_stored(client, clinic, billing_admin, tmp_path):
    client.force_login(billing_admin)

    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"))

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert response.json()["error"] == "permission_denied"
    assert not Instance.objects.exists()


def test_billing_token_gets_403_and_nothing_is_stored(client, clinic, tmp_path):
    headers = bearer(clinic, Role.BILLING)

    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"), **headers)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not Instance.objects.exists()


def test_outsider_gets_404_and_nothing_is_stored(client, clinic, outsider, tmp_path):
    client.force_login(outsider)

    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"))

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not Instance.objects.exists()


def test_other_clinics_token_gets_404_and_nothing_is_stored(client, clinic, other_clinic, tmp_path):
    headers = bearer(other_clinic, Role.OWNER)

    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"), **headers)

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not Instance.objects.exists()


def test_anonymous_caller_gets_401(client, clinic, tmp_path):
    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"))

    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert not Instance.objects.exists()


def test_zip_archive_is_queued_and_its_progress_can_be_polled(
    client, clinic, tmp_path, django_capture_on_commit_callbacks
):
    headers = bearer(clinic, Role.UPLOADER)
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("IMAGES/IM1", write_ct(tmp_path / "1.dcm").read_bytes())
        zipped.writestr("README.TXT", b"Viewer instructions")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_file(client, clinic, archive, **headers)
    batch = UploadBatch.objects.for_clinic(clinic).get()
    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)
    status = client.get(response.json()["status_url"], **headers)

    assert response.status_code == HTTPStatus.ACCEPTED
    assert response.json()["outcome"] == "queued"
    assert response.json()["batch"] == str(batch.uuid)
    assert len(callbacks) == 2  # the unpacking, and the staged archive's copy to the replica
    assert status.status_code == HTTPStatus.OK
    assert status.json()["status"] == "done"
    assert status.json()["counts"]["stored"] == 1 and status.json()["counts"]["skipped"] == 1
    assert Instance.objects.for_clinic(clinic).count() == 1


def test_other_clinics_token_gets_404_for_an_archive(client, clinic, other_clinic, tmp_path):
    batch = UploadBatch.objects.create(clinic=clinic, archive_name="a.zip")
    headers = bearer(other_clinic, Role.OWNER)

    response = client.get(f"/api/v1/clinics/{other_clinic.slug}/uploads/{batch.uuid}/", **headers)

    assert response.status_code == HTTPStatus.NOT_FOUND

"""The upload page and endpoints: who may upload, what each answer says, ZIP archives unpacked safely."""

from __future__ import annotations

import io
import zipfile
from http import HTTPStatus
from pathlib import Path

import pytest
from django.urls import reverse

from studies.ingest import tasks
from studies.models import Instance, Study, UploadBatch, UploadItem
from tenants.models import Clinic
from tests.dicom_files import copy_sample, sample_path, write_ct


def page_url(clinic: Clinic) -> str:
    return reverse("studies:upload", kwargs={"clinic_slug": clinic.slug})


def file_url(clinic: Clinic) -> str:
    return reverse("studies:upload-file", kwargs={"clinic_slug": clinic.slug})


def post_file(client, clinic: Clinic, path: Path, name: str | None = None):
    with path.open("rb") as fileobj:
        return client.post(file_url(clinic), {"file": fileobj, "path": name or path.name})


def test_uploader_sees_the_upload_page(client, clinic, uploader):
    client.force_login(uploader)

    response = client.get(page_url(clinic))

    assert response.status_code == HTTPStatus.OK
    assert b"studies/upload.js" in response.content
    assert b"webkitdirectory" in response.content


def test_uploader_uploads_a_file_and_it_is_stored(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    path = write_ct(tmp_path / "ct.dcm")

    response = post_file(client, clinic, path)

    assert response.status_code == HTTPStatus.CREATED
    assert response.json()["outcome"] == "stored"
    study = Study.objects.for_clinic(clinic).get()
    assert response.json()["study"] == str(study.uuid)
    assert Instance.objects.for_clinic(clinic).get().size_bytes == path.stat().st_size


def test_file_larger_than_the_memory_limit_goes_through_a_temporary_file(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    path = write_ct(tmp_path / "big.dcm", rows=512, columns=512, frames=5)
    assert path.stat().st_size > 2 * 1024 * 1024

    response = post_file(client, clinic, path)

    assert response.json()["outcome"] == "stored"
    assert Instance.objects.for_clinic(clinic).get().number_of_frames == 5


def test_second_upload_of_the_same_file_is_already_present(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    path = write_ct(tmp_path / "ct.dcm")
    post_file(client, clinic, path)

    response = post_file(client, clinic, path)

    assert response.status_code == HTTPStatus.OK
    assert response.json()["outcome"] == "already_present"
    assert Instance.objects.count() == 1


def test_truncated_file_is_rejected_with_a_reason_and_nothing_stored(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    path = write_ct(tmp_path / "ct.dcm")
    path.write_bytes(path.read_bytes()[:-50])

    response = post_file(client, clinic, path)

    assert response.status_code == HTTPStatus.UNPROCESSABLE_ENTITY
    assert response.json()["outcome"] == "rejected"
    assert "truncated" in response.json()["reason"]
    assert not Instance.objects.exists()


def test_non_dicom_file_is_rejected(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    path = tmp_path / "notes.txt"
    path.write_text("not an image")

    response = post_file(client, clinic, path)

    assert response.status_code == HTTPStatus.OK
    assert response.json() == {"outcome": "skipped", "reason": "Not a DICOM file: it has no DICOM header."}


def test_dicomdir_is_skipped(client, clinic, uploader):
    client.force_login(uploader)

    response = post_file(client, clinic, sample_path("dicomdirtests/DICOMDIR"), name="CD/DICOMDIR")

    assert response.status_code == HTTPStatus.OK
    assert response.json()["outcome"] == "skipped"
    assert "DICOMDIR" in response.json()["reason"]


def test_upload_over_quota_is_rejected_with_the_space_left(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=100)

    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"))

    assert response.status_code == HTTPStatus.INSUFFICIENT_STORAGE
    assert response.json()["outcome"] == "rejected"
    assert "only 100 bytes" in response.json()["reason"]
    assert not Instance.objects.exists()


def test_billing_admin_cannot_upload(client, clinic, billing_admin, tmp_path):
    client.force_login(billing_admin)

    page = client.get(page_url(clinic))
    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"))

    assert page.status_code == HTTPStatus.FORBIDDEN
    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not Instance.objects.exists()


def test_outsider_gets_404_and_nothing_is_stored(client, clinic, outsider, tmp_path):
    client.force_login(outsider)

    page = client.get(page_url(clinic))
    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"))

    assert page.status_code == HTTPStatus.NOT_FOUND
    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not Instance.objects.exists()


def test_anonymous_visitor_is_sent_to_sign_in(client, clinic, tmp_path):
    response = post_file(client, clinic, write_ct(tmp_path / "ct.dcm"))

    assert response.status_code == HTTPStatus.FOUND
    assert not Instance.objects.exists()


# ---- ZIP archives ----------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _cd_members(tmp_path: Path) -> dict[str, bytes]:
    study = "1.2.826.0.1.3680043.8.498.1"
    return {
        "CD/DICOMDIR": sample_path("dicomdirtests/DICOMDIR").read_bytes(),
        "CD/README.TXT": b"Viewer instructions",
        "CD/IMAGES/SERIES1/IM1": write_ct(tmp_path / "1.dcm", study_uid=study).read_bytes(),
        "CD/IMAGES/SERIES1/IM2": write_ct(tmp_path / "2.dcm", study_uid=study).read_bytes(),
        "CD/IMAGES/deep/er/MR": copy_sample("MR_small.dcm", tmp_path / "mr.dcm").read_bytes(),
        "CD/thumbs/preview.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        "../../escape.dcm": write_ct(tmp_path / "3.dcm").read_bytes(),
        "CD/broken.dcm": write_ct(tmp_path / "4.dcm").read_bytes()[:-40],
    }


def _upload_zip(client, clinic, path: Path, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = post_file(client, clinic, path)
    return response, callbacks


def _status(client, clinic, batch_uuid: str) -> dict:
    url = reverse("studies:upload-batch", kwargs={"clinic_slug": clinic.slug, "batch_uuid": batch_uuid})
    return client.get(url).json()


def test_zip_archive_is_queued_then_unpacked_with_a_result_per_member(
    client, clinic, uploader, tmp_path, django_capture_on_commit_callbacks
):
    client.force_login(uploader)
    archive = _zip(tmp_path / "cd.zip", _cd_members(tmp_path))

    response, callbacks = _upload_zip(client, clinic, archive, django_capture_on_commit_callbacks)
    batch = UploadBatch.objects.for_clinic(clinic).get()
    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)
    status = _status(client, clinic, response.json()["batch"])

    assert response.status_code == HTTPStatus.ACCEPTED
    assert response.json()["outcome"] == "queued"
    assert len(callbacks) == 2  # the unpacking, and the staged archive's copy to the replica
    assert status["status"] == "done"
    assert status["counts"] == {"stored": 3, "already_present": 0, "skipped": 3, "rejected": 2}
    results = {item["name"]: (item["outcome"], item["reason"]) for item in status["items"]}
    assert results["CD/IMAGES/deep/er/MR"][0] == "stored"
    assert results["CD/DICOMDIR"][0] == "skipped"
    assert results["CD/README.TXT"] == ("skipped", "Not a DICOM file: it has no DICOM header.")
    assert results["../../escape.dcm"][0] == "rejected" and "Unsafe path" in results["../../escape.dcm"][1]
    assert "truncated" in results["CD/broken.dcm"][1]
    assert Instance.objects.for_clinic(clinic).count() == 3
    assert Study.objects.for_clinic(clinic).count() == 2


def test_unpacking_twice_changes_nothing_and_the_staged_archive_is_gone(
    client, clinic, uploader, tmp_path, settings, django_capture_on_commit_callbacks
):
    client.force_login(uploader)
    archive = _zip(tmp_path / "cd.zip", _cd_members(tmp_path))
    _upload_zip(client, clinic, archive, django_capture_on_commit_callbacks)
    batch = UploadBatch.objects.for_clinic(clinic).get()
    staged = batch.staging_key
    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)

    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)

    assert UploadItem.objects.for_clinic(clinic).count() == 8
    assert Instance.objects.for_clinic(clinic).count() == 3
    primary = Path(settings.PRIMARY_STORE_URL.removeprefix("file://"))
    assert not (primary / staged).exists()


def test_zip_bomb_member_is_refused(client, clinic, uploader, tmp_path, django_capture_on_commit_callbacks):
    client.force_login(uploader)
    archive = _zip(tmp_path / "bomb.zip", {"bomb.dcm": b"\x00" * (40 * 1024 * 1024)})
    assert archive.stat().st_size < 100 * 1024

    _upload_zip(client, clinic, archive, django_capture_on_commit_callbacks)
    batch = UploadBatch.objects.for_clinic(clinic).get()
    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)

    item = UploadItem.objects.for_clinic(clinic).get()
    assert item.outcome == "rejected" and "zip bomb" in item.reason
    assert not Instance.objects.exists()


def test_archive_over_the_total_size_limit_stops(
    client, clinic, uploader, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.UPLOAD_ZIP_MAX_TOTAL_BYTES = 3000
    client.force_login(uploader)
    members = {f"{i}.dcm": write_ct(tmp_path / f"{i}.dcm").read_bytes() for i in range(5)}
    archive = _zip(tmp_path / "big.zip", members, compression=zipfile.ZIP_STORED)

    _upload_zip(client, clinic, archive, django_capture_on_commit_callbacks)
    batch = UploadBatch.objects.for_clinic(clinic).get()
    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.status == UploadBatch.Status.FAILED
    assert "allowed total size" in batch.message
    assert Instance.objects.for_clinic(clinic).count() < 5


def test_archive_with_too_many_members_fails_before_unpacking(
    client, clinic, uploader, tmp_path, settings, django_capture_on_commit_callbacks
):
    settings.UPLOAD_ZIP_MAX_MEMBERS = 3
    client.force_login(uploader)
    archive = _zip(tmp_path / "many.zip", {f"{i}.txt": b"x" for i in range(4)})

    _upload_zip(client, clinic, archive, django_capture_on_commit_callbacks)
    batch = UploadBatch.objects.for_clinic(clinic).get()
    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)

    batch.refresh_from_db()
    assert batch.status == UploadBatch.Status.FAILED
    assert "at most 3" in batch.message
    assert not UploadItem.objects.exists()


def test_corrupt_zip_fails_with_a_message(client, clinic, uploader, tmp_path, django_capture_on_commit_callbacks):
    client.force_login(uploader)
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)

    response, _ = _upload_zip(client, clinic, path, django_capture_on_commit_callbacks)
    batch = UploadBatch.objects.for_clinic(clinic).get()
    tasks.upload_zip_extract(clinic_id=clinic.pk, batch_id=batch.pk)

    assert _status(client, clinic, response.json()["batch"])["status"] == "failed"
    assert "not a readable ZIP" in UploadBatch.objects.get().message


def test_outsider_gets_404_for_another_clinics_batch(
    client, clinic, uploader, outsider, tmp_path, django_capture_on_commit_callbacks
):
    client.force_login(uploader)
    response, _ = _upload_zip(
        client, clinic, _zip(tmp_path / "a.zip", {"a.txt": b"a"}), django_capture_on_commit_callbacks
    )
    client.force_login(outsider)
    other_clinic = Clinic.objects.get(slug="clinic-b")

    own_url = reverse(
        "studies:upload-batch", kwargs={"clinic_slug": clinic.slug, "batch_uuid": response.json()["batch"]}
    )
    cross_url = reverse(
        "studies:upload-batch", kwargs={"clinic_slug": other_clinic.slug, "batch_uuid": response.json()["batch"]}
    )

    assert client.get(own_url).status_code == HTTPStatus.NOT_FOUND
    assert client.get(cross_url).status_code == HTTPStatus.NOT_FOUND


@pytest.mark.parametrize("name", ["/etc/passwd", "C:/x.dcm", "a/../../b.dcm", "..\\..\\c.dcm"])
def test_unsafe_member_names_are_recognised(name):
    from studies.ingest.uploads import _safe_member_name

    assert _safe_member_name(name) is None


def test_nested_member_names_are_kept():
    from studies.ingest.uploads import _safe_member_name

    assert _safe_member_name("./CD//IMAGES/./IM1") == "CD/IMAGES/IM1"


def test_zip_detection_uses_content_not_name(tmp_path):
    from studies.ingest.uploads import is_zip_file

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a", b"a")
    disguised = tmp_path / "archive.dcm"
    disguised.write_bytes(buffer.getvalue())

    assert is_zip_file(str(disguised))
    assert not is_zip_file(str(write_ct(tmp_path / "ct.zip")))

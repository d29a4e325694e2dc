"""ZIP download of a study or a series: the original files, decrypted on the fly, audited."""

from __future__ import annotations

import hashlib
import io
import zipfile
from http import HTTPStatus

import pytest

from studies.archive import stores
from studies.archive.errors import ArchiveError
from studies.models import Study
from tenants.models import AuditEvent
from tests.dicom_files import write_series
from tests.factories import ingest_files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def stored(clinic, tmp_path):
    """A study of two series (3 CT and 2 MR instances) stored through ingest; returns its originals."""
    first = write_series(tmp_path / "a", count=3, series_number=1, patient_name="ROE^RICHARD")
    study_uid = __import__("pydicom").dcmread(first[0]).StudyInstanceUID
    second = write_series(tmp_path / "b", count=2, source="MR_small.dcm", study_uid=study_uid, series_number=2,
                          patient_name="ROE^RICHARD")
    ingest_files(clinic=clinic, paths=first + second)
    study = Study.objects.for_clinic(clinic).get(study_instance_uid=study_uid)
    return study, {sha(p.read_bytes()) for p in first}, {sha(p.read_bytes()) for p in second}


def download(client, study, series=None):
    url = f"/c/{study.clinic.slug}/studies/{study.uuid}/"
    url += f"series/{series.uuid}/download/" if series else "download/"
    response = client.get(url)
    return response, (b"".join(response.streaming_content) if response.status_code == 200 else b"")


def test_study_zip_holds_the_original_files_byte_for_byte(client, clinician, stored):
    study, ct_hashes, mr_hashes = stored
    client.force_login(clinician)

    response, body = download(client, study)

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == f'attachment; filename="study-{study.uuid}.zip"'
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert {sha(archive.read(name)) for name in names} == ct_hashes | mr_hashes
    assert sorted(names) == sorted(
        [f"study-{study.uuid}/series-0001-CT/instance-0000{n}.dcm" for n in (1, 2, 3)]
        + [f"study-{study.uuid}/series-0002-MR/instance-0000{n}.dcm" for n in (1, 2)]
    )
    assert not any("ROE" in name or "RICHARD" in name for name in names)


def test_series_zip_holds_only_that_series(client, clinician, stored):
    study, _, mr_hashes = stored
    series = study.series.get(modality="MR")
    client.force_login(clinician)

    response, body = download(client, study, series)

    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert {sha(archive.read(name)) for name in archive.namelist()} == mr_hashes


def test_download_is_audited_without_patient_data(client, clinician, stored):
    study, _, _ = stored
    client.force_login(clinician)

    download(client, study)

    event = AuditEvent.objects.get(action="study.downloaded")
    assert event.object_id == str(study.uuid) and event.actor == clinician
    assert event.details == {"instances": 5}


def test_tampered_object_breaks_the_download_instead_of_serving_wrong_bytes(client, clinician, clinic, stored):
    study, _, _ = stored
    instance = study.series.get(modality="CT").instances.order_by("instance_number").last()
    path = stores.get_store("primary").path(instance.object_key)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    client.force_login(clinician)

    response = client.get(f"/c/{clinic.slug}/studies/{study.uuid}/download/")

    with pytest.raises(ArchiveError):
        b"".join(response.streaming_content)
    response.close()


@pytest.mark.parametrize("role_user", ["uploader", "billing_admin"])
def test_members_without_view_right_cannot_download(client, stored, role_user, request):
    study, _, _ = stored
    client.force_login(request.getfixturevalue(role_user))

    response, _ = download(client, study)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not AuditEvent.objects.filter(action="study.downloaded").exists()


def test_outsider_gets_404_for_study_and_series_downloads(client, outsider, stored):
    study, _, _ = stored
    client.force_login(outsider)

    assert download(client, study)[0].status_code == HTTPStatus.NOT_FOUND
    assert download(client, study, study.series.first())[0].status_code == HTTPStatus.NOT_FOUND
    assert not AuditEvent.objects.filter(action="study.downloaded").exists()


def test_series_of_another_study_is_404(client, clinician, clinic, stored, tmp_path):
    study, _, _ = stored
    other_paths = write_series(tmp_path / "other", count=1)
    other_series = ingest_files(clinic=clinic, paths=other_paths)[0].series
    client.force_login(clinician)

    response, _ = download(client, study, other_series)

    assert response.status_code == HTTPStatus.NOT_FOUND


def test_study_zip_from_s3_storage_matches_the_originals(client, clinician, clinic, s3_stores, tmp_path):
    paths = write_series(tmp_path / "s3", count=2)
    study = ingest_files(clinic=clinic, paths=paths)[0].series.study
    client.force_login(clinician)

    response, body = download(client, study)

    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert {sha(archive.read(n)) for n in archive.namelist()} == {sha(p.read_bytes()) for p in paths}


def test_zip64_archive_reads_back_byte_for_byte(client, clinician, stored, monkeypatch):
    # Lower zipfile's 4 GB threshold so that every member and the directory take the ZIP64 path.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1024)
    study, ct_hashes, mr_hashes = stored
    client.force_login(clinician)

    response, body = download(client, study)

    monkeypatch.undo()
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert all(info.extra for info in archive.infolist())  # ZIP64 extra fields present
        assert {sha(archive.read(name)) for name in archive.namelist()} == ct_hashes | mr_hashes

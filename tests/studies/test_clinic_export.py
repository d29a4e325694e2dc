"""Self-service clinic export for owners: parts with a DICOMDIR, built by the worker task, mailed, audited."""

from __future__ import annotations

import io
import zipfile
from http import HTTPStatus

import pytest
from django.core import mail
from pydicom import dcmread

from studies.exports import tasks
from studies.exports.models import ClinicExport, ExportStatus
from tenants.models import AuditEvent
from tests.dicom_files import write_ct
from tests.factories import ingest_files


@pytest.fixture
def two_studies(clinic, tmp_path):
    paths = [
        write_ct(
            tmp_path / f"a{i}.dcm", study_uid="1.2.826.0.1.3680043.8.498.501", instance_number=i, patient_id="EX-1"
        )
        for i in range(2)
    ]
    paths.append(write_ct(tmp_path / "b.dcm", study_uid="1.2.826.0.1.3680043.8.498.502", patient_id="EX-2"))
    ingest_files(clinic=clinic, paths=paths)


def _request(client, clinic, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(f"/c/{clinic.slug}/exports/new/")
    return response, callbacks


def test_owner_gets_a_mailed_link_to_parts_with_a_dicomdir(
    client, owner, clinic, two_studies, settings, django_capture_on_commit_callbacks
):
    settings.CLINIC_EXPORT_PART_BYTES = 1  # one study per part
    client.force_login(owner)
    response, callbacks = _request(client, clinic, django_capture_on_commit_callbacks)
    job = ClinicExport.objects.get()
    assert response.status_code == HTTPStatus.FOUND
    assert len(callbacks) == 1

    tasks.clinic_export_build(clinic_id=clinic.pk, export_id=job.pk)

    job.refresh_from_db()
    assert job.status == ExportStatus.DONE
    assert len(job.parts) == 2
    (message,) = mail.outbox
    assert message.to == [owner.email]
    assert f"/c/{clinic.slug}/exports/{job.uuid}/" in message.body
    images = 0
    for number in (1, 2):
        download = client.get(f"/c/{clinic.slug}/exports/{job.uuid}/parts/{number}/")
        assert download.status_code == HTTPStatus.OK
        with zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))) as archive:
            assert "DICOMDIR" in archive.namelist()
            dcmread(io.BytesIO(archive.read("DICOMDIR")))
            images += len([n for n in archive.namelist() if n != "DICOMDIR"])
    assert images == 3
    actions = list(
        AuditEvent.objects.for_clinic(clinic).filter(action__startswith="export.").values_list("action", flat=True)
    )
    assert sorted(actions) == ["export.downloaded", "export.downloaded", "export.finished", "export.requested"]


def test_running_the_task_twice_builds_once(client, owner, clinic, two_studies, django_capture_on_commit_callbacks):
    client.force_login(owner)
    _request(client, clinic, django_capture_on_commit_callbacks)
    job = ClinicExport.objects.get()

    tasks.clinic_export_build(clinic_id=clinic.pk, export_id=job.pk)
    again = tasks.clinic_export_build(clinic_id=clinic.pk, export_id=job.pk)

    assert again == "skipped"
    assert len(mail.outbox) == 1


def test_a_second_request_while_one_is_prepared_is_refused(client, owner, clinic, django_capture_on_commit_callbacks):
    client.force_login(owner)
    _request(client, clinic, django_capture_on_commit_callbacks)

    response = client.post(f"/c/{clinic.slug}/exports/new/", follow=True)

    assert "already being prepared" in response.content.decode()
    assert ClinicExport.objects.count() == 1


def test_admin_may_not_export(client, admin, clinic):
    client.force_login(admin)

    response = client.post(f"/c/{clinic.slug}/exports/new/")

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not ClinicExport.objects.exists()


def test_outsider_gets_404_and_no_export(client, outsider, clinic, owner, django_capture_on_commit_callbacks):
    client.force_login(owner)
    _request(client, clinic, django_capture_on_commit_callbacks)
    job = ClinicExport.objects.get()
    client.force_login(outsider)

    responses = [
        client.post(f"/c/{clinic.slug}/exports/new/"),
        client.get(f"/c/{clinic.slug}/exports/{job.uuid}/"),
        client.get(f"/c/{clinic.slug}/exports/{job.uuid}/parts/1/"),
    ]

    assert [r.status_code for r in responses] == [HTTPStatus.NOT_FOUND] * 3
    assert ClinicExport.objects.count() == 1


def test_expired_exports_lose_their_archives(client, owner, clinic, two_studies, django_capture_on_commit_callbacks):
    client.force_login(owner)
    _request(client, clinic, django_capture_on_commit_callbacks)
    job = ClinicExport.objects.get()
    tasks.clinic_export_build(clinic_id=clinic.pk, export_id=job.pk)
    ClinicExport.objects.update(expires_at="2000-01-01T00:00:00Z")

    assert tasks.clinic_exports_expire() == 1

    job.refresh_from_db()
    assert job.status == ExportStatus.EXPIRED and job.parts == []
    assert client.get(f"/c/{clinic.slug}/exports/{job.uuid}/parts/1/").status_code == HTTPStatus.NOT_FOUND

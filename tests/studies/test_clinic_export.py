"""Self-service clinic export for owners: parts with a DICOMDIR, built by the worker task, mailed, audited."""

from __future__ import annotations

import io
import tempfile
import uuid
import zipfile
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path

import pytest
from django.core import mail
from django.utils import timezone
from pydicom import dcmread

from studies.archive import objects, stores
from studies.exports import services, tasks
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


def _killed_mid_build(clinic, owner, *, minutes_ago: int) -> tuple[ClinicExport, str]:
    """An export whose worker died after storing one part: RUNNING, its last report ``minutes_ago``."""
    orphan = objects.object_put(clinic=clinic, source=io.BytesIO(b"part of a killed build"), object_uuid=uuid.uuid4())
    job = ClinicExport.objects.create(
        clinic=clinic, requested_by=owner, status=ExportStatus.RUNNING,
        parts=[{"key": orphan.key, "size_bytes": orphan.size_bytes, "studies": 1, "instances": 2, "name": "p1.zip"}],
        studies_done=1, heartbeat_at=timezone.now() - timedelta(minutes=minutes_ago),
    )
    return job, orphan.key


@pytest.mark.usefixtures("tasks_run_inline")
def test_an_export_whose_worker_was_killed_is_built_again_by_the_sweep(clinic, owner, two_studies, settings):
    job, orphan = _killed_mid_build(clinic, owner, minutes_ago=settings.CLINIC_EXPORT_STALE_SECONDS // 60 + 1)
    leftover = Path(tempfile.mkdtemp(prefix=f"clinic-export-{job.uuid}-"))
    (leftover / "image.dcm").write_bytes(b"plain DICOM of the killed build")

    resumed = services.clinic_exports_resume()

    job.refresh_from_db()
    assert resumed == 1
    assert job.status == ExportStatus.DONE
    assert sum(part["studies"] for part in job.parts) == 2
    assert orphan not in {part["key"] for part in job.parts}
    assert not stores.get_store("primary").exists(orphan)
    assert not leftover.exists()
    assert len(mail.outbox) == 1


def test_a_redelivered_build_takes_over_a_stale_export_and_not_a_live_one(clinic, owner, two_studies, settings):
    live, _ = _killed_mid_build(clinic, owner, minutes_ago=0)

    assert tasks.clinic_export_build(clinic_id=clinic.pk, export_id=live.pk) == "skipped"
    assert services.clinic_exports_resume() == 0

    ClinicExport.objects.filter(pk=live.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.CLINIC_EXPORT_STALE_SECONDS + 60))
    assert tasks.clinic_export_build(clinic_id=clinic.pk, export_id=live.pk) == "done"
    live.refresh_from_db()
    assert live.status == ExportStatus.DONE

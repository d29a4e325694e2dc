"""Clinic export seen from outside: expired links, failed builds and other clinics' owners."""

from __future__ import annotations

from datetime import timedelta
from http import HTTPStatus

import pytest
from django.utils import timezone

from studies.archive import stores
from studies.backup import export
from studies.exports import tasks
from studies.exports.models import ClinicExport, ExportStatus
from tenants.models import AuditEvent
from tests.dicom_files import write_ct
from tests.factories import ingest_files


@pytest.fixture
def two_studies(clinic, tmp_path):
    paths = [write_ct(tmp_path / f"s{i}.dcm", study_uid=f"1.2.826.0.1.3680043.8.498.61{i}", patient_id=f"EA-{i}")
             for i in range(2)]
    ingest_files(clinic=clinic, paths=paths)


def _built(client, owner, clinic, capture) -> ClinicExport:
    client.force_login(owner)
    with capture(execute=False):
        client.post(f"/c/{clinic.slug}/exports/new/")
    job = ClinicExport.objects.get()
    tasks.clinic_export_build(clinic_id=clinic.pk, export_id=job.pk)
    job.refresh_from_db()
    return job


def test_a_part_past_its_keeping_time_is_not_served_before_the_sweep_runs(
    client, owner, clinic, two_studies, django_capture_on_commit_callbacks
):
    job = _built(client, owner, clinic, django_capture_on_commit_callbacks)
    ClinicExport.objects.filter(pk=job.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = client.get(f"/c/{clinic.slug}/exports/{job.uuid}/parts/1/")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not AuditEvent.objects.for_clinic(clinic).filter(action="export.downloaded").exists()


def test_another_clinics_owner_cannot_reuse_the_link_under_their_own_clinic(
    client, owner, clinic, other_clinic, two_studies, django_capture_on_commit_callbacks
):
    job = _built(client, owner, clinic, django_capture_on_commit_callbacks)
    other_owner = other_clinic.memberships.get().user
    client.force_login(other_owner)

    response = client.get(f"/c/{other_clinic.slug}/exports/{job.uuid}/parts/1/")

    assert response.status_code == HTTPStatus.NOT_FOUND


def test_a_failed_build_leaves_no_part_stored_or_downloadable(
    client, owner, clinic, two_studies, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.CLINIC_EXPORT_PART_BYTES = 1  # one study per part: the second one fails
    real = export.clinic_export
    calls = []

    def failing_second(**kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(**kwargs)

    monkeypatch.setattr(export, "clinic_export", failing_second)
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=False):
        client.post(f"/c/{clinic.slug}/exports/new/")
    job = ClinicExport.objects.get()

    with pytest.raises(OSError):
        tasks.clinic_export_build(clinic_id=clinic.pk, export_id=job.pk)

    job.refresh_from_db()
    assert job.status == ExportStatus.FAILED
    assert client.get(f"/c/{clinic.slug}/exports/{job.uuid}/parts/1/").status_code == HTTPStatus.NOT_FOUND
    primary = stores.get_store("primary")
    assert all(not primary.exists(str(part["key"])) for part in job.parts)
    assert AuditEvent.objects.for_clinic(clinic).filter(action="export.failed").exists()

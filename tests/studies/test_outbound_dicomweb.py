"""Migration from a DICOMweb source (QIDO-RS to list, WADO-RS to retrieve) against Orthanc's DICOMweb plugin."""

from __future__ import annotations

import json
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path

import pytest
import requests
from django.utils import timezone

from studies.ingest import instance_ingest
from studies.models import Instance
from studies.outbound import dicomweb_source, services
from studies.outbound.models import JobStatus, MigrationJob
from tenants.audit import AuditEvent
from tenants.models import Clinic
from tests.dicom_files import write_study
from tests.peers import running_orthanc
from tests.studies.dimse_support import register_node
from tests.studies.test_outbound import _files_data_sets, _migrate, _old_archive, _stored_data_sets

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.usefixtures("tasks_run_inline")]

TOKEN = "tok-3d1f9a7c-never-shown"
PASSWORD = "pw-8c2e-never-shown"


@pytest.fixture(autouse=True)
def _loopback_allowed(settings):
    # The Orthanc sources run on 127.0.0.1, an internal address a source may have only when allowed.
    settings.DICOMWEB_SOURCE_ALLOWED_NETWORKS = ["127.0.0.0/8"]


@pytest.fixture
def orthanc(tmp_path):
    with running_orthanc(tmp_path / "orthanc") as peer:
        yield peer


def _dicomweb_url(orthanc) -> str:
    return f"{orthanc.url}/dicom-web"


def _everything_said(clinic, *responses) -> str:
    audit = list(AuditEvent.objects.filter(clinic=clinic).values_list("details", "actor_label"))
    return json.dumps([r.json() if hasattr(r, "json") else r for r in responses], default=str) + str(audit)


def test_a_scoped_dicomweb_migration_imports_exactly_the_scope_with_data_sets_equal_to_the_source(
    client, clinic, admin, orthanc, tmp_path
):
    _ct_2023, mr_2024, _ct_2024 = _old_archive(orthanc, tmp_path)
    client.force_login(admin)

    report = _migrate(
        client,
        clinic,
        dicomweb_url=_dicomweb_url(orthanc),
        dicomweb_token=TOKEN,
        study_date_from="20240101",
        study_date_to="20241231",
        modalities=["MR"],
    )

    assert (report["status"], report["studies_total"], report["missing"]) == ("done", 1, [])
    assert (report["node"], report["dicomweb_url"], report["method"]) == (None, _dicomweb_url(orthanc), "WADO-RS")
    assert report["dicomweb_auth"] == "bearer"
    assert report["instances_done"] == report["instances_total"] == len(mr_2024.files)
    assert _stored_data_sets(clinic) == _files_data_sets(mr_2024.files)
    listing = client.get(f"/api/v1/clinics/{clinic.slug}/migrations/")
    page = client.get(f"/c/{clinic.slug}/outbound/migrations/{report['id']}/")
    said = _everything_said(clinic, listing, report) + page.content.decode()
    assert TOKEN not in said
    job = MigrationJob.objects.get()
    assert TOKEN.encode() not in bytes(job.dicomweb_credentials)


def test_a_dicomweb_migration_run_again_stores_nothing_twice(client, clinic, admin, orthanc, tmp_path):
    _old_archive(orthanc, tmp_path)
    client.force_login(admin)
    body = {"dicomweb_url": _dicomweb_url(orthanc), "dicomweb_username": "migrator", "dicomweb_password": PASSWORD}
    first = _migrate(client, clinic, **body)
    stored = set(Instance.objects.for_clinic(clinic).values_list("pk", "object_key"))

    second = _migrate(client, clinic, **body)

    assert first["status"] == second["status"] == "done"
    assert first["instances_done"] == second["instances_done"] == 3 + 4 + 2
    assert set(Instance.objects.for_clinic(clinic).values_list("pk", "object_key")) == stored
    assert first["dicomweb_auth"] == "basic"
    assert PASSWORD not in _everything_said(clinic, first, second)


def test_a_dicomweb_migration_retrieves_only_the_missing_instances_of_a_study(clinic, orthanc, tmp_path):
    _ct_2023, mr_2024, _ct_2024 = _old_archive(orthanc, tmp_path)
    instance_ingest(clinic=clinic, source_path=str(mr_2024.files[0]), source="test")
    already = Instance.objects.get()

    job = services.migration_create(clinic=clinic, dicomweb_url=_dicomweb_url(orthanc), patient_ids=["OLD-2"])

    job.refresh_from_db()
    assert (job.status, job.instances_done, job.instances_failed) == (JobStatus.DONE, 4, 0)
    assert Instance.objects.for_clinic(clinic).filter(pk=already.pk).exists()
    assert _stored_data_sets(clinic) == _files_data_sets(mr_2024.files)


def test_a_wrong_dicomweb_url_stops_the_migration_with_a_clear_error_and_stores_nothing(
    client, clinic, admin, orthanc, tmp_path
):
    _old_archive(orthanc, tmp_path)
    client.force_login(admin)

    report = _migrate(client, clinic, dicomweb_url=f"{orthanc.url}/not-dicom-web", dicomweb_token=TOKEN)

    assert report["status"] == "stopped"
    assert "404" in report["error"] and f"{orthanc.url}/not-dicom-web" in report["error"]
    assert "base URL" in report["error"]
    assert not Instance.objects.exists()
    assert TOKEN not in _everything_said(clinic, report)


def test_a_dicomweb_source_that_is_down_is_reported_unreachable_and_waited_for(clinic, orthanc, tmp_path):
    _old_archive(orthanc, tmp_path)
    url = _dicomweb_url(orthanc)
    orthanc.stop()
    job = MigrationJob.objects.create(clinic=clinic, dicomweb_url=url, method=MigrationJob.Method.WADO)

    with pytest.raises(dicomweb_source.SourceUnreachable, match="cannot be reached"):
        services.migration_run(job=job)

    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.heartbeat_at is None  # left to be retried, not given up
    orthanc.start()
    while services.migration_run(job=job):
        job.refresh_from_db()
    job.refresh_from_db()
    assert (job.status, job.instances_done) == (JobStatus.DONE, 9)


@pytest.mark.parametrize(
    "body, says",
    [
        ({"dicomweb_url": "ftp://pacs.example/dicom-web"}, "http"),
        ({"dicomweb_url": "https://user:secret@pacs.example/dicom-web"}, "own fields"),
        (
            {
                "dicomweb_url": "https://pacs.example/dicom-web",
                "dicomweb_token": "t",
                "dicomweb_username": "u",
                "dicomweb_password": "p",
            },
            "not both",
        ),
        ({"dicomweb_url": "https://pacs.example/dicom-web", "dicomweb_username": "u"}, "password"),
        ({"dicomweb_url": "https://pacs.example/dicom-web", "method": "C-MOVE"}, "WADO-RS"),
        ({}, "one of them"),
    ],
)
def test_a_bad_dicomweb_source_is_refused_and_creates_nothing(client, clinic, admin, body, says):
    client.force_login(admin)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/migrations/", body, content_type="application/json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert says in response.json()["message"]
    assert not MigrationJob.objects.exists()


def test_a_node_and_a_dicomweb_url_together_are_refused(client, clinic, admin):
    register_node(clinic, ae_title="OLDPACS")
    client.force_login(admin)

    response = client.post(
        f"/api/v1/clinics/{clinic.slug}/migrations/",
        {"node": "OLDPACS", "dicomweb_url": "https://pacs.example/dicom-web"},
        content_type="application/json",
    )

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not MigrationJob.objects.exists()


def test_dicomweb_migration_api_answers_404_to_an_outsider(client, clinic, outsider, orthanc, tmp_path):
    _old_archive(orthanc, tmp_path)
    client.force_login(outsider)

    response = client.post(
        f"/api/v1/clinics/{clinic.slug}/migrations/",
        {"dicomweb_url": _dicomweb_url(orthanc), "dicomweb_token": TOKEN},
        content_type="application/json",
    )

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not MigrationJob.objects.exists()
    assert not Instance.objects.exists()


def test_the_migration_page_migrates_from_a_dicomweb_source_without_showing_its_token(
    client, clinic, admin, orthanc, tmp_path
):
    _old_archive(orthanc, tmp_path)
    client.force_login(admin)

    response = client.post(
        f"/c/{clinic.slug}/outbound/migrations/",
        {
            "node": "",
            "method": "C-GET",
            "dicomweb_url": _dicomweb_url(orthanc),
            "dicomweb_token": TOKEN,
            "modalities": "CT",
        },
        follow=True,
    )

    assert response.status_code == HTTPStatus.OK
    assert b"Every image the old archive listed (5) is stored here." in response.content
    assert _dicomweb_url(orthanc).encode() in response.content
    listing = client.get(f"/c/{clinic.slug}/outbound/migrations/")
    assert TOKEN.encode() not in response.content + listing.content


def test_basic_credentials_are_sent_to_a_source_that_requires_them_and_wrong_ones_stop_the_job(
    client, clinic, admin, tmp_path
):
    locked = {"AuthenticationEnabled": True, "RegisteredUsers": {"migrator": PASSWORD}}
    with running_orthanc(tmp_path / "locked", extra_config=locked) as orthanc:
        study = write_study(tmp_path / "s", copies=2)
        for path in study.files:
            response = requests.post(
                f"{orthanc.url}/instances", data=path.read_bytes(), auth=("migrator", PASSWORD), timeout=30
            )
            response.raise_for_status()
        client.force_login(admin)
        url = _dicomweb_url(orthanc)

        refused = _migrate(
            client, clinic, dicomweb_url=url, dicomweb_username="migrator", dicomweb_password="wrong-password"
        )
        accepted = _migrate(client, clinic, dicomweb_url=url, dicomweb_username="migrator", dicomweb_password=PASSWORD)

    assert refused["status"] == "stopped" and "credentials" in refused["error"] and "401" in refused["error"]
    assert (accepted["status"], accepted["instances_done"], accepted["missing"]) == ("done", 2, [])
    assert set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True)) == set(study.sop_uids)
    assert PASSWORD not in _everything_said(clinic, refused, accepted)


def test_a_dicomweb_migration_that_would_pass_the_quota_stops_and_keeps_what_it_has(
    client, clinic, admin, orthanc, tmp_path
):
    _old_archive(orthanc, tmp_path)
    one_file = Path(write_study(tmp_path / "size").files[0]).stat().st_size
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=int(one_file * 4.5))
    client.force_login(admin)

    report = _migrate(client, clinic, dicomweb_url=_dicomweb_url(orthanc))

    assert report["status"] == "stopped"
    assert "quota" in report["error"].lower() or "space" in report["error"].lower()
    kept = Instance.objects.for_clinic(clinic).count()
    assert 1 <= kept < 9
    assert report["instances_done"] == kept


def test_a_dicomweb_migration_whose_worker_died_is_resumed_by_the_sweep_without_duplicates(clinic, orthanc, tmp_path):
    _old_archive(orthanc, tmp_path)
    job = MigrationJob.objects.create(
        clinic=clinic, dicomweb_url=_dicomweb_url(orthanc), method=MigrationJob.Method.WADO, associations=1
    )
    services.migration_run(job=job, slice_seconds=0.001)
    first_pass = Instance.objects.for_clinic(clinic).count()
    MigrationJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        heartbeat_at=timezone.now() - timedelta(minutes=10),
        queued_at=timezone.now() - timedelta(minutes=10),
    )

    assert services.outbound_sweep()["migrations"] == 1

    job.refresh_from_db()
    assert 0 < first_pass < 9
    assert (job.status, job.instances_done, job.instances_failed) == (JobStatus.DONE, 9, 0)
    uids = list(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True))
    assert len(uids) == len(set(uids)) == 9

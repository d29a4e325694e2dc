"""Outbound DICOM against a real peer: send to Orthanc, migrate Orthanc's archive in, route to Orthanc."""

from __future__ import annotations

import io
import time
from datetime import date, timedelta
from http import HTTPStatus
from pathlib import Path

import pytest
from django.utils import timezone
from pydicom import Dataset, dcmread

from studies.ingest import instance_ingest
from studies.models import DicomNode, Instance
from studies.outbound import services
from studies.outbound.models import JobStatus, MigrationJob, RouteDelivery, SendJob
from tenants.audit import AuditEvent
from tests.dicom_files import write_study
from tests.peers import running_orthanc
from tests.studies import test_backup_faults as faults
from tests.studies.dimse_support import BYTE_EXACT_SAMPLES, register_node, running_scp
from tests.studies.test_backup_faults import _wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.usefixtures("tasks_run_inline")]


@pytest.fixture
def orthanc(clinic, tmp_path):
    # Orthanc answers queries and retrieves only from modalities it knows: it knows the clinic's AE.
    with running_orthanc(tmp_path / "orthanc", portal_ae=clinic.ae_title) as peer:
        yield peer


@pytest.fixture
def orthanc_node(clinic, orthanc) -> DicomNode:
    return register_node(clinic, ae_title=orthanc.ae_title, port=orthanc.dicom_port)


def _values(dataset: Dataset) -> dict:
    """A data set's values by tag, sequences recursively: what "the same data set" means between archives.

    Orthanc (DCMTK) re-encodes what it stores (OB for encapsulated pixel data where a writer put OW,
    sequences with defined lengths), so two archives holding the same data set differ in bytes only.
    """
    values = {}
    for element in dataset:
        if element.VR == "SQ":
            values[element.tag] = [_values(item) for item in element.value]
        else:
            values[element.tag] = element.value
    return values


def _data_sets(files: dict[str, bytes]) -> dict[str, dict]:
    return {uid: _values(dcmread(io.BytesIO(data))) for uid, data in files.items()}


def _files_data_sets(paths: list[Path]) -> dict[str, dict]:
    return {str(dcmread(path).SOPInstanceUID): _values(dcmread(path)) for path in paths}


def _stored_data_sets(clinic) -> dict[str, dict]:
    from studies.dimse.move import instance_dataset

    return {instance.sop_instance_uid: _values(instance_dataset(clinic=clinic, instance=instance))
            for instance in Instance.objects.for_clinic(clinic)}


# --- Send ------------------------------------------------------------------------------------------


def test_a_study_sent_to_orthanc_arrives_whole_and_unchanged(client, clinic, clinician, orthanc, orthanc_node,
                                                             tmp_path):
    study_files = write_study(tmp_path / "study", samples=BYTE_EXACT_SAMPLES)
    for path in study_files.files:
        instance_ingest(clinic=clinic, source_path=str(path), source="test")
    client.force_login(clinician)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/studies/{study_files.study_uid}/send/",
                           {"node": orthanc.ae_title}, content_type="application/json")

    assert response.status_code == HTTPStatus.ACCEPTED
    job = SendJob.objects.get()
    assert job.status == JobStatus.DONE
    detail = client.get(f"/api/v1/clinics/{clinic.slug}/sends/{response.json()['id']}/").json()
    assert (detail["status"], detail["progress"]) == ("done", 1.0)
    assert (detail["instances_done"], detail["instances_failed"]) == (len(study_files.files), 0)
    assert all(result["is_success"] for result in detail["results"])
    assert _data_sets(orthanc.instance_files()) == _files_data_sets(study_files.files)


def test_sending_calls_with_the_clinic_ae_title_unless_the_node_names_another(clinic, orthanc, tmp_path):
    node = register_node(clinic, ae_title=orthanc.ae_title, port=orthanc.dicom_port)
    other = register_node(clinic, ae_title="ROUTER", port=orthanc.dicom_port, calling_ae_title="PORTALOUT")

    from studies.outbound.scu import calling_ae_title

    assert calling_ae_title(clinic=clinic, node=node) == clinic.ae_title
    assert calling_ae_title(clinic=clinic, node=other) == "PORTALOUT"


def test_a_send_to_a_node_that_is_down_is_retried_then_reported_failed(clinic, orthanc, orthanc_node, tmp_path):
    study_files = write_study(tmp_path / "study")
    instance_ingest(clinic=clinic, source_path=str(study_files.files[0]), source="test")
    study = Instance.objects.get().series.study
    orthanc.stop()
    job = SendJob.objects.create(clinic=clinic, node=orthanc_node, study=study, instances_total=1)

    with pytest.raises(services.scu.NodeUnreachable):
        services.send_run(job=job)
    services.send_give_up(job=job, reason="unreachable")

    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.instances_done == 0


def test_send_api_answers_404_to_an_outsider_and_queues_nothing(client, clinic, outsider, tmp_path):
    study_files = write_study(tmp_path / "study")
    instance_ingest(clinic=clinic, source_path=str(study_files.files[0]), source="test")
    register_node(clinic, ae_title="PACS2")
    client.force_login(outsider)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/studies/{study_files.study_uid}/send/",
                           {"node": "PACS2"}, content_type="application/json")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not SendJob.objects.exists()


def test_an_uploader_may_not_send(client, clinic, uploader, tmp_path):
    study_files = write_study(tmp_path / "study")
    instance_ingest(clinic=clinic, source_path=str(study_files.files[0]), source="test")
    register_node(clinic, ae_title="PACS2")
    client.force_login(uploader)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/studies/{study_files.study_uid}/send/",
                           {"node": "PACS2"}, content_type="application/json")

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not SendJob.objects.exists()


def test_sending_to_an_unknown_node_says_which_node(client, clinic, clinician, tmp_path):
    study_files = write_study(tmp_path / "study")
    instance_ingest(clinic=clinic, source_path=str(study_files.files[0]), source="test")
    client.force_login(clinician)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/studies/{study_files.study_uid}/send/",
                           {"node": "NOWHERE"}, content_type="application/json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "NOWHERE" in response.json()["message"]


# --- Migration -------------------------------------------------------------------------------------


def _old_archive(orthanc, tmp_path) -> tuple:
    """Fill Orthanc with three studies: CT 2023, MR 2024 (two series), CT 2024."""
    ct_2023 = write_study(tmp_path / "a", samples=["CT_small.dcm"], patient_id="OLD-1", study_date=date(2023, 3, 1),
                          copies=3)
    mr_2024 = write_study(tmp_path / "b", samples=["MR_small.dcm", "MR_small_RLE.dcm"], patient_id="OLD-2",
                          study_date=date(2024, 5, 2), copies=2)
    ct_2024 = write_study(tmp_path / "c", samples=["CT_small.dcm"], patient_id="OLD-3", study_date=date(2024, 6, 3),
                          copies=2)
    for study in (ct_2023, mr_2024, ct_2024):
        orthanc.upload(study.files)
    return ct_2023, mr_2024, ct_2024


def _migrate(client, clinic, **body):
    response = client.post(f"/api/v1/clinics/{clinic.slug}/migrations/", body, content_type="application/json")
    assert response.status_code == HTTPStatus.ACCEPTED, response.content
    return client.get(f"/api/v1/clinics/{clinic.slug}/migrations/{response.json()['id']}/").json()


def test_a_scoped_migration_imports_exactly_the_scope_with_data_sets_equal_to_the_source(
    client, clinic, admin, orthanc, orthanc_node, tmp_path
):
    ct_2023, mr_2024, ct_2024 = _old_archive(orthanc, tmp_path)
    client.force_login(admin)

    report = _migrate(client, clinic, node=orthanc.ae_title, study_date_from="20240101", study_date_to="20241231",
                      modalities=["MR"])

    assert (report["status"], report["studies_total"], report["missing"]) == ("done", 1, [])
    assert report["instances_done"] == report["instances_total"] == len(mr_2024.files)
    assert _stored_data_sets(clinic) == _files_data_sets(mr_2024.files)


def test_a_migration_run_again_stores_nothing_twice(client, clinic, admin, orthanc, orthanc_node, tmp_path):
    _old_archive(orthanc, tmp_path)
    client.force_login(admin)
    first = _migrate(client, clinic, node=orthanc.ae_title)
    stored = set(Instance.objects.for_clinic(clinic).values_list("pk", "object_key"))

    second = _migrate(client, clinic, node=orthanc.ae_title)

    assert first["status"] == second["status"] == "done"
    assert first["instances_done"] == second["instances_done"] == 3 + 4 + 2
    assert set(Instance.objects.for_clinic(clinic).values_list("pk", "object_key")) == stored


def test_a_migration_by_c_move_receives_through_the_listener(client, clinic, admin, tmp_path):
    with running_scp() as scp_port:
        with running_orthanc(tmp_path / "orthanc", portal_ae=clinic.ae_title, portal_dicom_port=scp_port) as orthanc:
            register_node(clinic, ae_title=orthanc.ae_title, port=orthanc.dicom_port)
            _ct_2023, _mr, ct_2024 = _old_archive(orthanc, tmp_path)
            client.force_login(admin)

            report = _migrate(client, clinic, node=orthanc.ae_title, method="C-MOVE", modalities=["CT"],
                              study_date_from="20240601")

    assert (report["status"], report["missing"]) == ("done", [])
    assert set(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True)) == set(ct_2024.sop_uids)


def test_a_migration_that_would_pass_the_quota_stops_with_a_clear_message_and_keeps_what_it_has(
    client, clinic, admin, orthanc, orthanc_node, tmp_path
):
    from tenants.models import Clinic

    _old_archive(orthanc, tmp_path)
    one_file = Path(write_study(tmp_path / "size").files[0]).stat().st_size
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=int(one_file * 4.5))
    client.force_login(admin)

    report = _migrate(client, clinic, node=orthanc.ae_title)

    assert report["status"] == "stopped"
    assert "quota" in report["error"].lower() or "space" in report["error"].lower()
    kept = Instance.objects.for_clinic(clinic).count()
    assert 1 <= kept < 9
    assert report["instances_done"] == kept


def test_a_migration_whose_worker_died_is_resumed_by_the_sweep_and_finishes_without_duplicates(
    clinic, admin, orthanc, orthanc_node, tmp_path
):
    _old_archive(orthanc, tmp_path)
    job = MigrationJob.objects.create(clinic=clinic, node=orthanc_node, associations=1)
    # A worker took the job, imported one study, and was killed: its lease is left behind.
    services.migration_run(job=job, slice_seconds=0.001)
    first_pass = Instance.objects.for_clinic(clinic).count()
    MigrationJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING,
                                                  heartbeat_at=timezone.now() - timedelta(minutes=10),
                                                  queued_at=timezone.now() - timedelta(minutes=10))

    queued = services.outbound_sweep()

    job.refresh_from_db()
    assert queued["migrations"] == 1
    assert 0 < first_pass < 9
    assert job.status == JobStatus.DONE
    assert Instance.objects.for_clinic(clinic).count() == 9
    assert job.instances_done == 9 and job.instances_failed == 0


class _InFlight:
    """Wraps a retrieve function and records how many studies were being retrieved at once."""

    def __init__(self, real):
        import threading

        self.real, self.lock, self.now, self.most, self.studies = real, threading.Lock(), 0, 0, []

    def __call__(self, **kwargs):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.studies.append(kwargs["study_instance_uid"])
        try:
            time.sleep(0.2)  # long enough for the other associations to start theirs
            return self.real(**kwargs)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.parametrize("method", ["C-GET", "C-MOVE"])
def test_parallel_associations_import_exactly_the_scope_each_study_once_and_nothing_twice(
    client, clinic, admin, tmp_path, monkeypatch, method
):
    from studies.outbound import scu

    retrieve = "study_get" if method == "C-GET" else "study_move"
    spy = _InFlight(getattr(scu, retrieve))
    monkeypatch.setattr(scu, retrieve, spy)
    with running_scp() as scp_port:
        with running_orthanc(tmp_path / "orthanc", portal_ae=clinic.ae_title, portal_dicom_port=scp_port) as orthanc:
            register_node(clinic, ae_title=orthanc.ae_title, port=orthanc.dicom_port)
            in_scope = [write_study(tmp_path / f"in{n}", patient_id=f"P-{n}", study_date=date(2024, 1, 1 + n),
                                    copies=3) for n in range(6)]
            out_of_scope = write_study(tmp_path / "out", patient_id="P-OUT", study_date=date(2019, 1, 1), copies=3)
            for study in (*in_scope, out_of_scope):
                orthanc.upload(study.files)
            client.force_login(admin)

            report = _migrate(client, clinic, node=orthanc.ae_title, method=method, associations=3,
                              study_date_from="20240101")

    assert (report["status"], report["missing"], report["associations"]) == ("done", [], 3)
    assert spy.most == 3  # three studies were retrieved at once, never more
    assert sorted(spy.studies) == sorted(study.study_uid for study in in_scope)  # each study once
    uids = list(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True))
    assert sorted(uids) == sorted(uid for study in in_scope for uid in study.sop_uids)
    assert report["instances_done"] == report["instances_total"] == 18


def test_the_instances_per_second_limit_holds_across_parallel_associations(clinic, orthanc, orthanc_node, tmp_path):
    studies = [write_study(tmp_path / f"s{n}", patient_id=f"T-{n}", copies=4) for n in range(4)]
    for study in studies:
        orthanc.upload(study.files)
    started = time.monotonic()
    job = services.migration_create(clinic=clinic, node=orthanc_node, associations=4, max_instances_per_second=8)
    elapsed = time.monotonic() - started  # the task ran inline, to the end

    job.refresh_from_db()
    assert (job.status, job.instances_done, job.instances_failed) == (JobStatus.DONE, 16, 0)
    # 16 instances at 8 per second: a batch waits for the time of those before it, and the last batch (one
    # file from each of the four associations at most) goes in after 12/8 s at the earliest.
    assert elapsed >= 12 / 8


def test_the_instances_per_second_limit_holds_for_a_c_move_migration_too(client, clinic, admin, tmp_path,
                                                                          monkeypatch):
    # C-MOVE's files arrive at the DIMSE listener, where the job cannot slow them: the requests are paced.
    from studies.outbound import scu

    asked: list[int] = []
    move = scu.study_move
    monkeypatch.setattr(scu, "study_move", lambda **kwargs: (asked.append(len(kwargs["sop_instance_uids"] or [])),
                                                             move(**kwargs))[1])
    with running_scp() as scp_port:
        with running_orthanc(tmp_path / "orthanc", portal_ae=clinic.ae_title, portal_dicom_port=scp_port) as orthanc:
            register_node(clinic, ae_title=orthanc.ae_title, port=orthanc.dicom_port)
            for n in range(2):
                orthanc.upload(write_study(tmp_path / f"s{n}", patient_id=f"M-{n}", copies=4).files)
            client.force_login(admin)
            started = time.monotonic()
            report = _migrate(client, clinic, node=orthanc.ae_title, method="C-MOVE", associations=2,
                              max_instances_per_second=4)
            elapsed = time.monotonic() - started

    assert (report["status"], report["instances_done"], report["missing"]) == ("done", 8, [])
    assert sorted(asked) == [4, 4]  # at most a second's worth per request, never a whole study at once
    assert elapsed >= (8 - 4) / 4  # the second request waited for the first one's second


def test_studies_left_with_missing_instances_are_tried_again_after_a_pause(clinic, orthanc_node, monkeypatch):
    # A passing fault (storage full for a moment) must not use up a study's three attempts within seconds.
    from studies.outbound import tasks
    from studies.outbound.models import MigrationStudy

    job = MigrationJob.objects.create(clinic=clinic, node=orthanc_node, status=JobStatus.RUNNING, is_listed=True)
    study = MigrationStudy.objects.create(clinic=clinic, job=job, study_instance_uid="1.2.3", attempts=1)
    fresh = MigrationStudy.objects.create(clinic=clinic, job=job, study_instance_uid="1.2.4", attempts=0)
    queued: list[float] = []
    monkeypatch.setattr(services, "migration_run", lambda **kwargs: True)  # a slice that left work to do
    monkeypatch.setattr(services, "job_enqueue", lambda *, job, countdown=0: queued.append(countdown))

    tasks.migration_job_run.apply(kwargs={"clinic_id": clinic.pk, "job_id": job.pk})
    fresh.delete()
    tasks.migration_job_run.apply(kwargs={"clinic_id": clinic.pk, "job_id": job.pk})

    assert queued == [0, services.MIGRATION_RETRY_SECONDS]  # at once while a study waits for its first try
    assert MigrationStudy.objects.get(pk=study.pk).state == MigrationStudy.State.PENDING


def test_a_migration_asking_for_too_many_associations_is_refused(client, clinic, admin, orthanc, orthanc_node):
    client.force_login(admin)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/migrations/", {"node": orthanc.ae_title,
                           "associations": 50}, content_type="application/json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not MigrationJob.objects.for_clinic(clinic).exists()


def test_migration_api_answers_404_to_an_outsider_and_403_to_a_clinician(client, clinic, clinician, outsider):
    register_node(clinic, ae_title="OLDPACS")
    body = {"node": "OLDPACS"}

    client.force_login(outsider)
    as_outsider = client.post(f"/api/v1/clinics/{clinic.slug}/migrations/", body, content_type="application/json")
    client.force_login(clinician)
    as_clinician = client.post(f"/api/v1/clinics/{clinic.slug}/migrations/", body, content_type="application/json")

    assert as_outsider.status_code == HTTPStatus.NOT_FOUND
    assert as_clinician.status_code == HTTPStatus.FORBIDDEN
    assert not MigrationJob.objects.exists()


def test_a_migration_with_an_inverted_date_range_is_refused(client, clinic, admin):
    register_node(clinic, ae_title="OLDPACS")
    client.force_login(admin)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/migrations/",
                           {"node": "OLDPACS", "study_date_from": "20250101", "study_date_to": "20240101"},
                           content_type="application/json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "after" in response.json()["message"]
    assert not MigrationJob.objects.exists()


def test_a_migration_is_audited_without_patient_ids(client, clinic, admin, orthanc, orthanc_node, tmp_path):
    _old_archive(orthanc, tmp_path)
    client.force_login(admin)

    _migrate(client, clinic, node=orthanc.ae_title, patient_ids=["OLD-2"])

    actions = list(AuditEvent.objects.filter(clinic=clinic, action__startswith="migration.").order_by("pk")
                   .values_list("action", flat=True))
    assert actions == ["migration.created", "migration.finished"]
    assert "OLD-2" not in str(list(AuditEvent.objects.filter(clinic=clinic).values_list("details", flat=True)))


# --- Routing ---------------------------------------------------------------------------------------


def test_routed_images_reach_a_node_that_was_down_once_it_is_back(client, clinic, admin, orthanc, orthanc_node,
                                                                 tmp_path):
    client.force_login(admin)
    response = client.post(f"/api/v1/clinics/{clinic.slug}/routing-rules/",
                           {"name": "CT to Orthanc", "destinations": [orthanc.ae_title], "modality": "CT"},
                           content_type="application/json")
    assert response.status_code == HTTPStatus.CREATED
    orthanc.stop()
    ct = write_study(tmp_path / "ct", samples=["CT_small.dcm"], copies=3)
    mr = write_study(tmp_path / "mr", samples=["MR_small.dcm"], copies=1)

    for path in [*ct.files, *mr.files]:
        instance_ingest(clinic=clinic, source_path=str(path), source="dimse")

    assert RouteDelivery.objects.filter(state=RouteDelivery.State.PENDING).count() == 3
    assert all(d.attempts >= 1 and d.last_error for d in RouteDelivery.objects.all())
    orthanc.start()
    services.route_deliveries_send(clinic=clinic, node=orthanc_node, now=timezone.now() + timedelta(days=1))
    assert orthanc.instance_uids() == set(ct.sop_uids)
    assert RouteDelivery.objects.filter(state=RouteDelivery.State.DELIVERED).count() == 3


def test_a_rule_on_the_calling_ae_title_forwards_only_that_senders_images(clinic, orthanc, orthanc_node, tmp_path):
    modality = register_node(clinic, ae_title="CT-SCANNER", port=104)
    services.routing_rule_create(clinic=clinic, name="scanner", destinations=[orthanc_node],
                                 calling_ae_title="CT-SCANNER")
    from_scanner = write_study(tmp_path / "a")
    from_elsewhere = write_study(tmp_path / "b")

    instance_ingest(clinic=clinic, source_path=str(from_scanner.files[0]), source="dimse", dicom_node=modality)
    instance_ingest(clinic=clinic, source_path=str(from_elsewhere.files[0]), source="dicomweb")

    assert orthanc.instance_uids() == set(from_scanner.sop_uids)


def test_routing_rules_api_answers_404_to_an_outsider(client, clinic, outsider):
    register_node(clinic, ae_title="PACS2")
    client.force_login(outsider)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/routing-rules/",
                           {"name": "x", "destinations": ["PACS2"]}, content_type="application/json")

    assert response.status_code == HTTPStatus.NOT_FOUND


# --- Pages -----------------------------------------------------------------------------------------


def test_the_study_page_sends_a_study_and_shows_its_progress(client, clinic, clinician, orthanc, orthanc_node,
                                                             tmp_path):
    study_files = write_study(tmp_path / "study", copies=2)
    for path in study_files.files:
        instance_ingest(clinic=clinic, source_path=str(path), source="test")
    study = Instance.objects.first().series.study
    client.force_login(clinician)
    page = client.get(f"/c/{clinic.slug}/studies/{study.uuid}/")
    assert b"Send to a node" in page.content

    response = client.post(f"/c/{clinic.slug}/outbound/send/{study.uuid}/", {"node": str(orthanc_node.uuid)},
                           follow=True)

    assert response.status_code == HTTPStatus.OK
    assert b"Done" in response.content
    assert b"2</span> of <span id=\"job-total\">2</span> images accepted" in response.content
    assert orthanc.instance_uids() == set(study_files.sop_uids)


def test_the_migration_page_starts_a_migration_and_shows_the_final_report(client, clinic, admin, orthanc,
                                                                          orthanc_node, tmp_path):
    _old_archive(orthanc, tmp_path)
    client.force_login(admin)

    response = client.post(f"/c/{clinic.slug}/outbound/migrations/",
                           {"node": str(orthanc_node.uuid), "method": "C-GET", "modalities": "CT"}, follow=True)

    assert response.status_code == HTTPStatus.OK
    assert b"Every image the old archive listed (5) is stored here." in response.content


def test_outbound_pages_answer_404_to_an_outsider(client, clinic, outsider):
    client.force_login(outsider)

    assert client.get(f"/c/{clinic.slug}/outbound/migrations/").status_code == HTTPStatus.NOT_FOUND
    assert client.get(f"/c/{clinic.slug}/outbound/routing/").status_code == HTTPStatus.NOT_FOUND


def test_received_migrated_files_are_valid_dicom(clinic, orthanc, orthanc_node, tmp_path):
    _old_archive(orthanc, tmp_path)
    job = MigrationJob.objects.create(clinic=clinic, node=orthanc_node)

    while services.migration_run(job=job):
        job.refresh_from_db()

    from studies.dimse.move import instance_dataset

    for instance in Instance.objects.for_clinic(clinic):
        dataset = instance_dataset(clinic=clinic, instance=instance)
        assert dataset.SOPInstanceUID == instance.sop_instance_uid


# --- A real worker, killed -------------------------------------------------------------------------


# The backup fault tests' real worker subprocess, shared.
broker_url = faults.broker_url
worker_factory = faults.worker_factory


def test_a_migration_resumes_after_kill_9_of_its_worker_with_nothing_missing_or_doubled(
    clinic, orthanc, orthanc_node, tmp_path, worker_factory, settings
):
    studies = [write_study(tmp_path / f"s{n}", patient_id=f"K-{n}", copies=4) for n in range(6)]
    for study in studies:
        orthanc.upload(study.files)
    settings.OUTBOUND_JOB_STALE_SECONDS = 3
    worker = worker_factory(OUTBOUND_JOB_STALE_SECONDS="3")
    worker.start()
    # Throttled so that the worker is killed in the middle of the job.
    job = services.migration_create(clinic=clinic, node=orthanc_node, max_instances_per_second=4)

    _wait_for(lambda: Instance.objects.for_clinic(clinic).count() >= 3, 60, "the migration to start")
    worker.kill()
    at_kill = Instance.objects.for_clinic(clinic).count()
    time.sleep(3.5)
    assert services.outbound_sweep()["migrations"] == 1
    worker = worker_factory(OUTBOUND_JOB_STALE_SECONDS="3")
    worker.start()
    _wait_for(lambda: MigrationJob.objects.get(pk=job.pk).status == JobStatus.DONE, 120, "the migration to finish")

    assert at_kill < 24
    uids = list(Instance.objects.for_clinic(clinic).values_list("sop_instance_uid", flat=True))
    assert sorted(uids) == sorted(uid for study in studies for uid in study.sop_uids)
    job.refresh_from_db()
    assert (job.instances_done, job.instances_failed) == (24, 0)


def test_a_compressed_study_sent_to_a_node_taking_only_uncompressed_data_arrives_decoded(clinic, tmp_path):
    import numpy as np

    study_files = write_study(tmp_path / "study", samples=["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
    for path in study_files.files:
        instance_ingest(clinic=clinic, source_path=str(path), source="test")
    uncompressed = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]
    with running_orthanc(tmp_path / "strict", portal_ae=clinic.ae_title,
                         extra_config={"AcceptedTransferSyntaxes": uncompressed}) as strict:
        node = register_node(clinic, ae_title=strict.ae_title, port=strict.dicom_port)
        job = services.send_create(clinic=clinic, study=Instance.objects.first().series.study, node=node)
        job.refresh_from_db()

        assert (job.status, job.instances_done, job.instances_failed) == (JobStatus.DONE, 2, 0)
        for path, uid in zip(study_files.files, study_files.sop_uids, strict=True):
            got = dcmread(io.BytesIO(strict.file_of(uid)))
            assert got.file_meta.TransferSyntaxUID in uncompressed
            assert np.array_equal(got.pixel_array, dcmread(path).pixel_array)

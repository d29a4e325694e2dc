"""Anonymization jobs on stored studies: pages, API, the result study, pseudonyms and re-identification."""

from __future__ import annotations

import io
import shutil
from http import HTTPStatus
from pathlib import Path

import pydicom
import pytest

from studies.anonymize import services, tasks
from studies.anonymize.models import AnonymizationJob, AnonymizedStudy, JobStatus, PatientPseudonym, UidMapping
from studies.archive import objects
from studies.ingest import instance_ingest
from studies.models import Instance, Study
from tenants.models import AuditEvent
from tests.dicom_files import PYDICOM_SAMPLES as SAMPLES  # noqa: E402


def stored(clinic, name: str, tmp_path: Path, **changes) -> Instance:
    path = tmp_path / name
    shutil.copy(SAMPLES / name, path)
    if changes:
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return instance_ingest(clinic=clinic, source_path=str(path)).instance


def run_job(job: AnonymizationJob) -> AnonymizationJob:
    """Run the job's tasks the way a worker would (each one twice, to show they are idempotent)."""
    tasks.anonymization_job_start(clinic_id=job.clinic_id, job_id=job.pk)
    for instance_id in services.job_instances(job):
        tasks.anonymization_instance(clinic_id=job.clinic_id, job_id=job.pk, instance_id=instance_id)
        tasks.anonymization_instance(clinic_id=job.clinic_id, job_id=job.pk, instance_id=instance_id)
    return AnonymizationJob.objects.get(pk=job.pk)


def read_object(clinic, instance: Instance) -> pydicom.Dataset:
    with objects.object_open(clinic=clinic, key=instance.object_key) as stream:
        return pydicom.dcmread(io.BytesIO(stream.read()))


@pytest.fixture
def ct_study(clinic, tmp_path) -> Study:
    return stored(clinic, "CT_small.dcm", tmp_path).series.study


def test_api_anonymization_makes_a_new_linked_study_without_the_patient(client, clinic, clinician, ct_study,
                                                                        django_capture_on_commit_callbacks):
    client.force_login(clinician)

    with django_capture_on_commit_callbacks(execute=False):
        response = client.post(f"/api/v1/clinics/{clinic.slug}/anonymizations/",
                               {"studies": [ct_study.study_instance_uid], "project": "Lung research",
                                "options": ["retain_patient_characteristics"]}, content_type="application/json")
    job = run_job(AnonymizationJob.objects.get(uuid=response.json()["id"]))

    assert response.status_code == HTTPStatus.ACCEPTED
    assert (job.status, job.done, job.failed) == (JobStatus.DONE, 1, 0)
    result = client.get(f"/api/v1/clinics/{clinic.slug}/anonymizations/{job.uuid}/").json()
    assert result["status"] == "done" and result["progress"] == 1.0
    new_study = Study.objects.get(study_instance_uid=result["result_studies"][0])
    assert new_study.pk != ct_study.pk
    assert AnonymizedStudy.objects.get(study=new_study).source_study == ct_study
    ds = read_object(clinic, Instance.objects.get(series__study=new_study))
    assert str(ds.PatientName) == "LUNGRESEARCH-0001"
    assert ds.PatientIdentityRemoved == "YES"
    assert "113108" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]
    assert AuditEvent.objects.filter(clinic=clinic, action="anonymization.requested").exists()


def test_the_same_patient_gets_the_same_pseudonym_in_a_later_batch(clinic, owner, tmp_path):
    first = stored(clinic, "CT_small.dcm", tmp_path).series.study
    later = stored(clinic, "MR_small.dcm", tmp_path, PatientID=first.patient.patient_id,
                   PatientName=first.patient.patient_name).series.study
    project = services.project_create(clinic=clinic, name="Longitudinal", pseudonym_prefix="RESEARCH")

    run_job(services.job_create(clinic=clinic, project=project, studies=[first]))
    run_job(services.job_create(clinic=clinic, project=project, studies=[later]))

    names = {str(read_object(clinic, i).PatientName) for i in Instance.objects.filter(
        series__study__anonymization__project=project)}
    assert names == {"RESEARCH-0001"}
    assert PatientPseudonym.objects.filter(project=project).count() == 1


def test_uids_stay_consistent_across_jobs_of_one_project(clinic, ct_study):
    project = services.project_create(clinic=clinic, name="Teaching")

    run_job(services.job_create(clinic=clinic, project=project, studies=[ct_study]))
    Study.objects.filter(anonymization__project=project).update(deleted_at=None)
    second = run_job(services.job_create(clinic=clinic, project=project, studies=[ct_study]))

    # The second batch produced the very same instance again: found already present, no new study.
    assert second.done == 1
    assert Study.objects.filter(anonymization__project=project).count() == 1


def test_only_owners_and_admins_can_reidentify_and_it_is_audited(client, clinic, owner, clinician, ct_study):
    project = services.project_create(clinic=clinic, name="Publication", pseudonym_prefix="PUBLICATION")
    run_job(services.job_create(clinic=clinic, project=project, studies=[ct_study]))
    new_uid = Study.objects.get(anonymization__project=project).study_instance_uid
    url = f"/c/{clinic.slug}/anonymize/projects/{project.uuid}/"

    client.force_login(clinician)
    refused = client.post(url, {"pseudonym": "PUBLICATION-0001"})
    client.force_login(owner)
    revealed = client.post(url, {"pseudonym": "PUBLICATION-0001", "uid": new_uid})

    assert refused.status_code == HTTPStatus.FORBIDDEN
    assert ct_study.patient.patient_id.encode() in revealed.content
    assert ct_study.study_instance_uid.encode() in revealed.content
    assert AuditEvent.objects.filter(clinic=clinic, action="anonymization.reidentified").count() == 1


def test_the_mapping_is_stored_sealed(clinic, ct_study):
    project = services.project_create(clinic=clinic, name="Sealed")

    run_job(services.job_create(clinic=clinic, project=project, studies=[ct_study]))

    pseudonym = PatientPseudonym.objects.get(project=project)
    assert ct_study.patient.patient_id.encode() not in bytes(pseudonym.sealed_identity)
    assert all(ct_study.study_instance_uid.encode() not in bytes(m.sealed_original)
               for m in UidMapping.objects.filter(project=project))
    assert UidMapping.objects.filter(project=project).count() >= 3


def test_burned_in_candidates_are_flagged_for_review(clinic, tmp_path):
    study = stored(clinic, "CT_small.dcm", tmp_path, BurnedInAnnotation="YES").series.study
    project = services.project_create(clinic=clinic, name="Review")

    job = run_job(services.job_create(clinic=clinic, project=project, studies=[study]))

    assert job.needs_review == 1
    assert AnonymizedStudy.objects.get(project=project).needs_review


def test_study_page_form_starts_a_job(client, clinic, clinician, ct_study, django_capture_on_commit_callbacks):
    client.force_login(clinician)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(f"/c/{clinic.slug}/anonymize/studies/{ct_study.uuid}/",
                               {"project": "Grand rounds", "options": ["clean_descriptors"]})

    job = AnonymizationJob.objects.get()
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"].endswith(f"/anonymize/jobs/{job.uuid}/")
    assert job.options == ["clean_descriptors"]
    # The job's own task is queued once the request's transaction commits (not merely "a callback").
    queued = [c.keywords for c in callbacks if getattr(c, "func", None) == tasks.anonymization_job_start.delay]
    assert queued == [{"clinic_id": clinic.pk, "job_id": job.pk}]


def test_unknown_option_is_refused_and_nothing_is_queued(client, clinic, clinician, ct_study):
    client.force_login(clinician)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/anonymizations/",
                           {"studies": [ct_study.study_instance_uid], "project": "X", "options": ["keep_everything"]},
                           content_type="application/json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not AnonymizationJob.objects.exists()


@pytest.mark.parametrize("who", ["uploader", "billing_admin"])
def test_roles_without_the_share_right_cannot_anonymize(client, clinic, ct_study, who, request):
    client.force_login(request.getfixturevalue(who))

    response = client.post(f"/api/v1/clinics/{clinic.slug}/anonymizations/",
                           {"studies": [ct_study.study_instance_uid], "project": "X"}, content_type="application/json")

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not AnonymizationJob.objects.exists()


def test_outsider_gets_404_and_no_job(client, clinic, outsider, ct_study):
    client.force_login(outsider)

    api = client.post(f"/api/v1/clinics/{clinic.slug}/anonymizations/",
                      {"studies": [ct_study.study_instance_uid], "project": "X"}, content_type="application/json")
    page = client.get(f"/c/{clinic.slug}/anonymize/studies/{ct_study.uuid}/")

    assert (api.status_code, page.status_code) == (HTTPStatus.NOT_FOUND, HTTPStatus.NOT_FOUND)
    assert not AnonymizationJob.objects.exists()


def test_a_source_too_large_for_memory_is_anonymized_from_disk_alike(clinic, tmp_path, monkeypatch):
    source = stored(clinic, "CT_small.dcm", tmp_path)
    monkeypatch.setattr(services, "SOURCE_IN_MEMORY_BYTES", 1024)  # the sample spills to a temporary file
    project = services.project_create(clinic=clinic, name="Large", pseudonym_prefix="LARGE")

    job = services.job_create(clinic=clinic, project=project, studies=[source.series.study])
    tasks.anonymization_job_start(clinic_id=clinic.pk, job_id=job.pk)
    tasks.anonymization_instances(clinic_id=clinic.pk, job_id=job.pk, instance_ids=services.job_instances(job))

    job.refresh_from_db()
    assert (job.status, job.done, job.failed) == (JobStatus.DONE, 1, 0)
    result = read_object(clinic, Instance.objects.get(series__study__anonymization__project=project))
    assert str(result.PatientName) == "LARGE-0001"
    assert result.PixelData == read_object(clinic, source).PixelData

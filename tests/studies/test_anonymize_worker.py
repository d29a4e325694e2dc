"""Anonymization jobs as workers run them: batches in parallel, a job that stopped moving resumed by the
sweep, and a real Celery worker killed with SIGKILL mid-job, with nothing lost and nothing stored twice."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from studies.anonymize import services, tasks
from studies.anonymize.models import AnonymizationJob, AnonymizationJobItem, JobStatus
from studies.models import Instance, Series, Study
from tests.dicom_files import write_study
from tests.factories import ingest_files
from tests.studies import test_backup_faults as faults
from tests.studies.test_backup_faults import _wait_for


def _source_study(clinic, tmp_path: Path, copies: int) -> Study:
    files = write_study(tmp_path / "source", samples=["CT_small.dcm", "MR_small.dcm"], copies=copies).files
    return ingest_files(clinic, files)[0].series.study


def _job_started(clinic, study: Study, *, batch: int, settings) -> tuple[AnonymizationJob, list[list[int]]]:
    """Create and start a job; return it and the batches its start queued (not run)."""
    settings.ANONYMIZATION_JOB_BATCH = batch
    project = services.project_create(clinic=clinic, name="Research")
    job = services.job_create(clinic=clinic, project=project, studies=[study])
    with mock.patch.object(tasks.anonymization_instances, "delay") as queued:
        tasks.anonymization_job_start(clinic_id=clinic.pk, job_id=job.pk)
    return job, [call.kwargs["instance_ids"] for call in queued.call_args_list]


def _run(job: AnonymizationJob, instance_ids: list[int]) -> None:
    tasks.anonymization_instances(clinic_id=job.clinic_id, job_id=job.pk, instance_ids=instance_ids)


def _assert_every_instance_stored_once(clinic, source: Study, job: AnonymizationJob) -> None:
    job.refresh_from_db()
    count = Instance.objects.for_clinic(clinic).filter(series__study=source).count()
    assert (job.status, job.done, job.failed, job.total) == (JobStatus.DONE, count, 0, count)
    assert AnonymizationJobItem.objects.filter(job=job).count() == count
    result = Study.objects.for_clinic(clinic).exclude(pk=source.pk).get()
    assert services.job_result_studies(job=job) == [result]
    instances = Instance.objects.for_clinic(clinic).filter(series__study=result)
    assert instances.count() == count
    assert len(set(instances.values_list("sop_instance_uid", flat=True))) == count
    # The study's and series' counters agree with the rows (no batch counted twice or lost).
    assert result.number_of_instances == count
    assert sum(Series.objects.for_clinic(clinic).filter(study=result).values_list("number_of_instances", flat=True)) == count


def test_a_running_job_that_stopped_moving_gets_what_is_left_queued_again(clinic, tmp_path, settings):
    source = _source_study(clinic, tmp_path, copies=3)
    job, batches = _job_started(clinic, source, batch=2, settings=settings)
    _run(job, batches[0])  # then the worker died: the other batches' messages are lost
    AnonymizationJob.objects.filter(pk=job.pk).update(
        progress_at=timezone.now() - timedelta(seconds=settings.ANONYMIZATION_JOB_STALE_SECONDS + 1))

    with mock.patch.object(tasks.anonymization_instances, "delay") as queued:
        swept = services.job_sweep()
        again = services.job_sweep()  # the first sweep's messages are on their way

    assert (swept, again) == (1, 0)
    requeued = [call.kwargs["instance_ids"] for call in queued.call_args_list]
    assert sorted(pk for ids in requeued for pk in ids) == sorted(pk for ids in batches[1:] for pk in ids)
    assert all(len(ids) <= 2 for ids in requeued)
    for ids in [*requeued, *batches]:  # the lost messages turn up after all: nothing is stored twice
        _run(job, ids)
    _assert_every_instance_stored_once(clinic, source, job)


def test_a_job_that_keeps_moving_is_left_alone(clinic, tmp_path, settings):
    source = _source_study(clinic, tmp_path, copies=2)
    job, batches = _job_started(clinic, source, batch=2, settings=settings)
    _run(job, batches[0])

    with mock.patch.object(tasks.anonymization_instances, "delay") as queued:
        swept = services.job_sweep()

    assert swept == 0
    assert not queued.called
    assert AnonymizationJob.objects.get(pk=job.pk).status == JobStatus.RUNNING


def test_a_job_whose_start_message_was_lost_is_started_by_the_sweep(clinic, tmp_path, settings):
    source = _source_study(clinic, tmp_path, copies=1)
    project = services.project_create(clinic=clinic, name="Research")
    job = services.job_create(clinic=clinic, project=project, studies=[source])  # its message never arrives
    AnonymizationJob.objects.filter(pk=job.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.ANONYMIZATION_JOB_STALE_SECONDS + 1))

    with mock.patch.object(tasks.anonymization_job_start, "delay") as started:
        swept = services.job_sweep()
        again = services.job_sweep()  # its message is on its way
        # Lost too, it seems: still queued a while later.
        later = services.job_sweep(now=timezone.now() + timedelta(seconds=settings.ANONYMIZATION_JOB_STALE_SECONDS + 1))

    assert (swept, again, later) == (1, 0, 1)
    assert [call.kwargs for call in started.call_args_list] == [{"clinic_id": clinic.pk, "job_id": job.pk}] * 2


@pytest.mark.postgresql
@pytest.mark.django_db(transaction=True)
def test_batches_of_one_job_run_in_parallel_keep_every_count_exact(clinic, tmp_path, settings):
    source = _source_study(clinic, tmp_path, copies=6)
    job, batches = _job_started(clinic, source, batch=3, settings=settings)
    errors: list[BaseException] = []

    def work(ids: list[int]) -> None:
        try:
            _run(job, ids)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    # Every batch twice at once, as a redelivery racing the first delivery would.
    threads = [threading.Thread(target=work, args=(ids,)) for ids in [*batches, *batches]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    _assert_every_instance_stored_once(clinic, source, job)


# --- A real worker, killed ------------------------------------------------------------------------------


# The backup fault tests' real worker subprocess, shared.
broker_url = faults.broker_url
worker_factory = faults.worker_factory


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_job_resumes_after_kill_9_of_its_worker_with_nothing_missing_or_doubled(
    clinic, tmp_path, settings, worker_factory
):
    source = _source_study(clinic, tmp_path, copies=30)
    count = Instance.objects.for_clinic(clinic).filter(series__study=source).count()
    settings.ANONYMIZATION_JOB_BATCH = 2
    settings.ANONYMIZATION_JOB_STALE_SECONDS = 2
    worker_env = {"ANONYMIZATION_JOB_BATCH": "2", "ANONYMIZATION_JOB_STALE_SECONDS": "2"}
    worker = worker_factory(**worker_env)
    worker.start()
    project = services.project_create(clinic=clinic, name="Research")
    job = services.job_create(clinic=clinic, project=project, studies=[source])  # queued on commit

    _wait_for(lambda: AnonymizationJobItem.objects.filter(job=job).count() >= 4, 60, "the job to be under way")
    worker.kill()
    at_kill = AnonymizationJobItem.objects.filter(job=job).count()
    time.sleep(2.5)
    assert services.job_sweep() == 1
    worker = worker_factory(**worker_env)
    worker.start()
    _wait_for(lambda: AnonymizationJob.objects.get(pk=job.pk).status == JobStatus.DONE, 120, "the job to finish")

    assert at_kill < count, "the worker finished the job before it could be killed"
    _assert_every_instance_stored_once(clinic, source, job)

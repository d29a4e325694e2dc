"""Celery entry points of anonymization: one job fans out into one task per batch of instances.

Load by id, call one service; ids only; safe to run twice. The names are the ones these tasks had in the
``studies.tasks`` hub, so messages already queued still resolve; ``studies.anonymize.services`` queues
them by these names, since this module imports it.
"""

from __future__ import annotations

from celery import shared_task

from studies.anonymize import services
from studies.anonymize.models import AnonymizationJob
from studies.archive.errors import StorageUnavailable
from studies.models import Instance


@shared_task(name=services.JOB_START_TASK, acks_late=True)
def anonymization_job_start(clinic_id: int, job_id: int) -> None:
    """Count the job's instances and queue one task per batch of instances."""
    job = AnonymizationJob.objects.for_clinic(clinic_id).filter(pk=job_id).first()
    if job is not None:
        services.job_start(job=job)


@shared_task(name=services.JOB_INSTANCES_TASK, acks_late=True, bind=True, max_retries=5)
def anonymization_instances(self, clinic_id: int, job_id: int, instance_ids: list[int]) -> None:
    """Anonymize a batch of a job's instances, stored as one ingest batch (finished ones are skipped)."""
    job = AnonymizationJob.objects.for_clinic(clinic_id).select_related("project", "clinic").filter(pk=job_id).first()
    if job is None:
        return
    # The stored DICOM JSON header is of no use here: not read, not decoded.
    instances = list(
        Instance.objects.for_clinic(clinic_id).select_related("series__study").defer("metadata")
        .filter(pk__in=instance_ids)
    )
    try:
        services.job_instances_process(job=job, instances=instances)
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc


@shared_task(name="studies.anonymize.tasks.anonymization_sweep", acks_late=True)
def anonymization_sweep() -> int:
    """Re-queue what is left of anonymization jobs whose worker stopped (killed, or a message lost)."""
    return services.job_sweep()


# Kept for messages queued before batching (one instance each).
@shared_task(name="studies.tasks.anonymization_instance", acks_late=True, bind=True, max_retries=5)
def anonymization_instance(self, clinic_id: int, job_id: int, instance_id: int) -> None:
    """Anonymize one instance of a job; a retry after a crash re-creates the same bytes (already present)."""
    job = AnonymizationJob.objects.for_clinic(clinic_id).select_related("project", "clinic").filter(pk=job_id).first()
    instance = Instance.objects.for_clinic(clinic_id).select_related("series__study").filter(pk=instance_id).first()
    if job is None or instance is None:
        return
    try:
        services.job_instance_process(job=job, instance=instance)
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc

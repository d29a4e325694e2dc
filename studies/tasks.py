"""Celery entry points of the studies app: load by id, call one service.

Tasks take ids and plain JSON values only (never models or patient data) and are safe to run twice.
Capabilities with a package keep their tasks there (``browse/tasks.py``, ``outbound/tasks.py``, loaded by
``StudiesConfig.ready``); the rest are here.
"""

from __future__ import annotations

from celery import shared_task

# Backup and recovery tasks live in their own module; re-exported so `studies.tasks.instance_replicate` works.
from studies.backup.tasks import (  # noqa: E402, F401
    backup_verify_batch,
    instance_replicate,
    object_repair,
    replica_purge,
    replica_reconcile,
    replication_sweep,
)

# --- Ingest from the browser: ZIP archives ----------------------------------------------------------


@shared_task(acks_late=True, bind=True, max_retries=5)
def upload_zip_extract(self, clinic_id: int, batch_id: int) -> None:
    """Unpack one uploaded ZIP archive and ingest its members (members already done are skipped)."""
    from django.utils import timezone

    from studies.archive.errors import StorageUnavailable
    from studies.ingest import uploads
    from studies.models import UploadBatch

    batch = UploadBatch.objects.for_clinic(clinic_id).select_related("clinic", "created_by", "upload_link").filter(pk=batch_id).first()
    if batch is None or batch.status in (UploadBatch.Status.DONE, UploadBatch.Status.FAILED):
        return  # deleted meanwhile, or finished by an earlier delivery
    try:
        uploads.upload_zip_extract(batch=batch)
    except StorageUnavailable as exc:
        if self.request.retries >= self.max_retries:
            UploadBatch.objects.for_clinic(clinic_id).filter(pk=batch_id).update(
                status=UploadBatch.Status.FAILED, finished_at=timezone.now(),
                message="Storage stayed unavailable while unpacking; upload the archive again.",
            )
            raise
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc


# --- Anonymization: one job fans out into one task per instance ------------------------------------


@shared_task(acks_late=True)
def anonymization_job_start(clinic_id: int, job_id: int) -> None:
    """Count the job's instances and queue one task per instance."""
    from studies.anonymize import services
    from studies.anonymize.models import AnonymizationJob

    job = AnonymizationJob.objects.for_clinic(clinic_id).filter(pk=job_id).first()
    if job is not None:
        services.job_start(job=job)


@shared_task(name="studies.tasks.anonymization_instances", acks_late=True, bind=True, max_retries=5)
def anonymization_instances(self, clinic_id: int, job_id: int, instance_ids: list[int]) -> None:
    """Anonymize a batch of a job's instances, stored as one ingest batch (finished ones are skipped)."""
    from studies.anonymize import services
    from studies.anonymize.models import AnonymizationJob
    from studies.archive.errors import StorageUnavailable
    from studies.models import Instance

    job = AnonymizationJob.objects.for_clinic(clinic_id).select_related("project", "clinic").filter(pk=job_id).first()
    if job is None:
        return
    instances = list(
        Instance.objects.for_clinic(clinic_id).select_related("series__study").filter(pk__in=instance_ids)
    )
    try:
        services.job_instances_process(job=job, instances=instances)
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc


# Kept for messages queued before batching (one instance each).
@shared_task(acks_late=True, bind=True, max_retries=5)
def anonymization_instance(self, clinic_id: int, job_id: int, instance_id: int) -> None:
    """Anonymize one instance of a job; a retry after a crash re-creates the same bytes (already present)."""
    from studies.anonymize import services
    from studies.anonymize.models import AnonymizationJob
    from studies.archive.errors import StorageUnavailable
    from studies.models import Instance

    job = AnonymizationJob.objects.for_clinic(clinic_id).select_related("project", "clinic").filter(pk=job_id).first()
    instance = Instance.objects.for_clinic(clinic_id).select_related("series__study").filter(pk=instance_id).first()
    if job is None or instance is None:
        return
    try:
        services.job_instance_process(job=job, instance=instance)
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc


# --- Intake safety: staged archives and quarantined instances are backed up and never stall ----------


@shared_task(acks_late=True, bind=True, max_retries=10)
def upload_staging_replicate(self, clinic_id: int, batch_id: int) -> bool:
    """Copy one staged ZIP archive to the replica (the intake sweep re-queues any copy lost here)."""
    from studies.archive.errors import ObjectMissing, StorageUnavailable
    from studies.ingest import uploads
    from studies.models import UploadBatch

    batch = UploadBatch.objects.for_clinic(clinic_id).filter(pk=batch_id).first()
    if batch is None:
        return False
    try:
        return uploads.upload_staging_replicate(batch=batch)
    except ObjectMissing:
        return False  # unpacked and deleted meanwhile
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc


@shared_task(acks_late=True, bind=True, max_retries=10)
def quarantined_replicate(self, clinic_id: int, held_id: int) -> bool:
    """Copy one quarantined instance's object to the replica."""
    from studies import quarantine
    from studies.archive.errors import ObjectMissing, StorageUnavailable
    from studies.models import QuarantinedInstance

    held = QuarantinedInstance.objects.for_clinic(clinic_id).filter(pk=held_id).first()
    if held is None:
        return False
    try:
        return quarantine.quarantined_replicate(held=held)
    except ObjectMissing:
        return False  # discarded meanwhile
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc


@shared_task(acks_late=True, ignore_result=True)
def quarantine_notify(clinic_id: int) -> bool:
    """Tell the clinic's owners and admins that instances are held for review (rate-limited)."""
    from studies import quarantine
    from tenants.models import Clinic

    clinic = Clinic.objects.filter(pk=clinic_id).first()
    return clinic is not None and quarantine.quarantine_notify(clinic=clinic)


@shared_task(acks_late=True, ignore_result=True)
def intake_sweep() -> dict[str, int]:
    """Every minute (beat): re-queue stalled ZIP unpacking and missing replica copies of staged archives
    and quarantined instances, as the replication sweep does for instances."""
    from datetime import timedelta

    from django.conf import settings

    from studies import quarantine
    from studies.ingest import uploads

    stale = uploads.upload_batches_stale(older_than=timedelta(seconds=settings.UPLOAD_ZIP_STALE_SECONDS))
    for clinic_id, batch_id in stale:
        upload_zip_extract.delay(clinic_id=clinic_id, batch_id=batch_id)
    age = timedelta(seconds=settings.REPLICATION_SWEEP_AGE_SECONDS)
    staged = uploads.upload_staging_pending(older_than=age)
    for clinic_id, batch_id in staged:
        upload_staging_replicate.delay(clinic_id=clinic_id, batch_id=batch_id)
    held = list(quarantine.quarantine_pending_replication(older_than=age).values_list("clinic_id", "pk")[:1000])
    for clinic_id, held_id in held:
        quarantined_replicate.delay(clinic_id=clinic_id, held_id=held_id)
    return {"batches": len(stale), "staged": len(staged), "quarantined": len(held)}
from studies.exports.tasks import clinic_export_build, clinic_exports_expire  # noqa: E402, F401

"""Celery entry points of intake: ZIP archives uploaded in the browser (unpacked, their staged copy sent to
the replica) and the intake sweep that re-queues what a crash left behind.

Load by id, call one service; ids and plain values only; safe to run twice. The names are the ones these
tasks had in the ``studies.tasks`` hub, so messages already queued and the beat schedule still resolve.
``studies.ingest.uploads`` queues them by these names, since this module imports it.
"""

from __future__ import annotations

from datetime import timedelta

from celery import current_app, shared_task
from django.conf import settings
from django.utils import timezone

from studies.archive.errors import ObjectMissing, StorageUnavailable
from studies.ingest import uploads
from studies.models import QuarantinedInstance, UploadBatch


@shared_task(name="studies.tasks.upload_zip_extract", acks_late=True, bind=True, max_retries=5)
def upload_zip_extract(self, clinic_id: int, batch_id: int) -> None:
    """Unpack one uploaded ZIP archive and ingest its members (members already done are skipped)."""
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


@shared_task(name="studies.tasks.upload_staging_replicate", acks_late=True, bind=True, max_retries=10)
def upload_staging_replicate(self, clinic_id: int, batch_id: int) -> bool:
    """Copy one staged ZIP archive to the replica (the intake sweep re-queues any copy lost here)."""
    batch = UploadBatch.objects.for_clinic(clinic_id).filter(pk=batch_id).first()
    if batch is None:
        return False
    try:
        return uploads.upload_staging_replicate(batch=batch)
    except ObjectMissing:
        return False  # unpacked and deleted meanwhile
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc


@shared_task(name="studies.tasks.intake_sweep", acks_late=True, ignore_result=True)
def intake_sweep() -> dict[str, int]:
    """Every minute (beat): re-queue stalled ZIP unpacking and missing replica copies of staged archives
    and quarantined instances, as the replication sweep does for instances."""
    stale = uploads.upload_batches_stale(older_than=timedelta(seconds=settings.UPLOAD_ZIP_STALE_SECONDS))
    for clinic_id, batch_id in stale:
        upload_zip_extract.delay(clinic_id=clinic_id, batch_id=batch_id)
    age = timedelta(seconds=settings.REPLICATION_SWEEP_AGE_SECONDS)
    staged = uploads.upload_staging_pending(older_than=age)
    for clinic_id, batch_id in staged:
        upload_staging_replicate.delay(clinic_id=clinic_id, batch_id=batch_id)
    # Held instances too: quarantine sits above ingest (it files through it), so its task is queued by name.
    held = list(
        QuarantinedInstance.objects.filter(replicated_at__isnull=True, received_at__lte=timezone.now() - age)
        .exclude(resolution=QuarantinedInstance.Resolution.DISCARDED)
        .values_list("clinic_id", "pk")[:1000]
    )
    for clinic_id, held_id in held:
        current_app.tasks["studies.tasks.quarantined_replicate"].delay(clinic_id=clinic_id, held_id=held_id)
    return {"batches": len(stale), "staged": len(staged), "quarantined": len(held)}

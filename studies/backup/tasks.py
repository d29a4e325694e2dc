"""Celery entry points of backup and recovery, registered under this module's names (``studies.backup.tasks.X``).

All take ids and plain values, are idempotent, and retry only transient storage errors.
``replica_purge`` runs on the ``replica-admin`` queue, consumed only by the worker that holds the
replica's delete-capable credentials (see README "Backup and recovery").
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from studies.archive.errors import ObjectMissing, StorageUnavailable
from studies.backup import (
    alerts,
    database,
    drill,
    index_sidecar,
    pgbackrest,
    recovery,
    replication,
    study_state,
    verification,
)
from studies.models import Instance
from tenants.models import Clinic

logger = logging.getLogger(__name__)

RETRY = {
    "acks_late": True,
    "autoretry_for": (StorageUnavailable,),
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 10,
}


@shared_task(**RETRY)
def instance_replicate(*, clinic_id: int, instance_id: int) -> bool:
    """Copy one instance's object to the replica; a no-op if it is gone or already replicated."""
    instance = Instance.objects.for_clinic(clinic_id).select_related("clinic").filter(pk=instance_id).first()
    if instance is None or instance.replicated_at is not None:
        return False
    try:
        return replication.instance_replicate(instance=instance)
    except ObjectMissing:
        # Not retried: primary lost the object. Verification/restore deal with it; say so loudly.
        logger.error("Cannot replicate %s: the primary store has no such object.", instance.object_key)
        return False


@shared_task(name=replication.INSTANCES_REPLICATE_TASK, **RETRY)
def instances_replicate(*, clinic_id: int, instance_ids: list[int]) -> int:
    """Copy a batch of instances to the replica (one message per ingest batch); returns how many were copied."""
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None:
        return 0
    return replication.instances_replicate(clinic=clinic, instance_ids=instance_ids)


@shared_task(name=replication.INDEX_SIDECAR_TASK, **RETRY)
def index_sidecar_write(*, clinic_id: int, instance_ids: list[int]) -> str | None:
    """Write the index sidecar of instances already on the replica (sync mode); returns its key."""
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None:
        return None
    return index_sidecar.index_sidecar_publish(clinic=clinic, instance_ids=instance_ids)


@shared_task(**RETRY)
def index_sidecars_compact(*, clinic_id: int | None = None) -> dict[str, int]:
    """Daily (beat, replica-admin queue): merge small index sidecars, drop purged instances from them."""
    # Unscoped when no clinic is given: the daily job walks every clinic.
    clinics = Clinic.objects.filter(pk=clinic_id) if clinic_id is not None else Clinic.objects.all()
    totals = {"written": 0, "deleted": 0, "dropped": 0}
    for clinic in clinics.order_by("pk").iterator():
        done = index_sidecar.index_sidecars_compact(clinic=clinic)
        totals["written"] += done.sidecars_written
        totals["deleted"] += done.sidecars_deleted
        totals["dropped"] += done.entries_dropped
    return totals


@shared_task(acks_late=True, ignore_result=True)
def replication_sweep() -> int:
    """Every minute (beat): re-queue instances pending for over a minute; alert on growing lag."""
    queued = replication.replication_sweep()
    alerts.backup_health_check()
    return queued


@shared_task(**RETRY)
def replica_reconcile(*, clinic_id: int | None = None) -> dict[str, int]:
    """Hourly (beat): copy to the replica whatever primary holds and the replica lacks (thumbnails, keys)."""
    # Unscoped when no clinic is given: the hourly job walks every clinic.
    clinics = Clinic.objects.filter(pk=clinic_id) if clinic_id is not None else Clinic.objects.all()
    totals = {"copied": 0, "lost_on_replica": 0}
    for clinic in clinics.order_by("pk").iterator():
        for name, value in replication.replica_reconcile(clinic=clinic).items():
            totals[name] += value
    return totals


@shared_task(acks_late=True)
def backup_verify_batch(*, clinic_id: int | None = None, limit: int | None = None) -> dict[str, int]:
    """Verify the next batch of due replica copies, newest first (beat, every few minutes)."""
    clinic = Clinic.objects.filter(pk=clinic_id).first() if clinic_id is not None else None
    run = verification.verification_run(
        clinic=clinic, limit=limit if limit is not None else settings.BACKUP_VERIFY_BATCH_SIZE
    )
    return {"checked": run.checked, "failed": run.failed}


@shared_task(name=recovery.OBJECT_REPAIR_TASK, **RETRY)
def object_repair(*, clinic_id: int, key: str) -> str:
    """Rewrite a primary object from the replica after a failed primary read (queued by the failover)."""
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None or not key.startswith(replication.clinic_prefix(clinic)):
        return "ignored"
    return recovery.object_repair(clinic=clinic, key=key)


@shared_task(**RETRY)
def replica_purge(*, clinic_id: int, key: str) -> bool:
    """Delete an object from the replica after the trash period, with the replica's own credentials.

    Refuses keys outside the clinic's prefix and keys the index still references (a purge must follow
    the deletion of the index rows), so a bad message cannot delete a live backup.
    """
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None or not key.startswith(replication.clinic_prefix(clinic)):
        logger.error("Refusing to purge replica object %s: not an object of clinic %s.", key, clinic_id)
        return False
    if Instance.objects.for_clinic(clinic).filter(object_key=key).exists():
        logger.error("Refusing to purge replica object %s: the index still references it.", key)
        return False
    try:
        replication.replica_object_purge(key=key)
    except ObjectMissing:
        return False
    return True


@shared_task(acks_late=True, ignore_result=True)
def database_backup() -> str:
    """Every minute (beat): anchor the audit chain heads and, on SQLite, write an encrypted snapshot.

    PostgreSQL needs no snapshot here: pgBackRest archives every WAL segment as PostgreSQL writes it.
    """
    if not cache.add("backup:database:running", 1, timeout=600):
        return "busy"  # the previous run is still writing; the next minute's run catches up
    try:
        database.audit_anchor_write()
        if database.database_engine() != "sqlite":
            return "anchored"
        snapshot = database.database_snapshot_create()
        cache.set("backup:database:last-success", timezone.now().isoformat(), timeout=None)
        return snapshot.snapshot_id if snapshot is not None else "unchanged"
    finally:
        cache.delete("backup:database:running")


@shared_task(acks_late=True, ignore_result=True)
def database_base_backup() -> str:
    """Daily (beat): a pgBackRest base backup, where this worker runs beside PostgreSQL."""
    if database.database_engine() != "postgresql" or not settings.DATABASE_BACKUP_PG_PATH:
        return "skipped"
    pgbackrest.base_backup(kind="incr")
    cache.set("backup:database:last-success", timezone.now().isoformat(), timeout=None)
    return "done"


@shared_task(acks_late=True, ignore_result=True)
def database_backups_prune() -> int:
    """Hourly (beat, replica-admin queue): delete snapshots and anchors past their retention."""
    return database.database_backups_prune()


@shared_task(**RETRY)
def study_state_publish(*, clinic_id: int, study_id: int) -> str | None:
    """Record a study's trash state in the replica after it changed (queued on commit)."""
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None:
        return None
    return study_state.study_state_publish_current(clinic=clinic, study_id=study_id)


@shared_task(**RETRY)
def study_states_sweep() -> int:
    """Hourly (beat): publish the state of trashed studies whose record a lost message never wrote."""
    return study_state.study_states_sweep()


@shared_task(acks_late=True, ignore_result=True)
def restore_drill() -> int:
    """Daily (beat): every RESTORE_DRILL_INTERVAL_DAYS, restore sample studies and the database; record it."""
    if not drill.restore_drill_due():
        return 0
    return sum(not run.passed for run in drill.restore_drill_run())

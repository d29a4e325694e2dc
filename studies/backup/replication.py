"""Replication: byte-for-byte copies of encrypted objects from the primary store to the replica.

Objects are copied still encrypted, so the replica never sees a plaintext byte and the replica alone,
with the master key, can rebuild everything (objects are self-describing; clinic keys are stored as
objects under ``clinics/<uuid>/keys/`` and a small ``clinic.json`` manifest names each clinic).

Flow: ingest writes each object through ``object_write_for_ingest`` (in ``sync`` mode into both stores
before the upload is acknowledged; a replica failure leaves the instance pending and alerts), then, once
the batch's index rows are committed, ``instances_replication_start`` queues one ``instances_replicate``
message per batch. The per-minute sweep queues any instance still pending after a minute whose message is
not already on its way, so a lost queue message never loses a backup. Both functions are registered with
``studies.ingest.hooks`` at start-up: ingest never imports backup. Once a batch is on the replica, its
index sidecar (``index_sidecar``) is written there too, so a rebuild needs no DICOM parsing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlparse

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from studies.archive import keys as archive_keys
from studies.archive import objects, stores
from studies.archive.errors import ObjectMissing, StorageUnavailable
from studies.backup import alerts, index_sidecar, mirror
from studies.ingest import hooks
from studies.models import ClinicKey, Instance, Series
from tenants.models import Clinic

logger = logging.getLogger(__name__)

SYNC = "sync"
ASYNC = "async"
# After a failed synchronous replica write, uploads skip the replica for this long (the sweep copies them).
REPLICA_DOWN_CACHE_KEY = "backup:replica-down"
REPLICA_DOWN_SECONDS = 30
# Instances per replication message; a message not done after REQUEUE_AFTER is assumed lost.
REPLICATION_BATCH = 50
REQUEUE_AFTER = timedelta(minutes=10)
INSTANCES_REPLICATE_TASK = "studies.backup.tasks.instances_replicate"
INDEX_SIDECAR_TASK = "studies.backup.tasks.index_sidecar_write"


def replication_mode() -> str:
    mode = getattr(settings, "REPLICATION_MODE", ASYNC)
    return SYNC if mode == SYNC else ASYNC


def clinic_prefix(clinic: Clinic) -> str:
    return f"clinics/{clinic.uuid}/"


def clinic_manifest_key(clinic: Clinic) -> str:
    return f"clinics/{clinic.uuid}/clinic.json"


def clinic_key_object_key(*, clinic: Clinic, key_id: str) -> str:
    # Written by studies.archive.keys on key creation and rotation; we only make sure it reaches the replica.
    return f"clinics/{clinic.uuid}/keys/{key_id}"


def object_copy(*, key: str, source: str = "primary", target: str = "replica") -> None:
    """Copy one object's stored bytes, unchanged, from one store to the other (streamed).

    Raises ObjectMissing if the source has no such object, StorageUnavailable if either store fails.
    """
    source_store = stores.get_store(source)
    target_store = stores.get_store(target)
    with contextlib.closing(source_store.open(key)) as stream:
        target_store.put(key, stream)


def instance_replicate(*, instance: Instance) -> bool:
    """Copy an instance's object to the replica and mark it replicated; False if it already was.

    Safe to run twice and concurrently: the copy is idempotent (same key, same bytes) and the mark is a
    conditional UPDATE, so ``replicated_at`` keeps the time of the first successful copy.
    """
    if instance.replicated_at is not None:
        return False
    object_copy(key=instance.object_key)
    clinic_manifest_replicate(clinic=instance.clinic)
    now = timezone.now()
    updated = (
        Instance.objects.for_clinic(instance.clinic_id)
        .filter(pk=instance.pk, replicated_at=None)
        .update(replicated_at=now)
    )
    if updated:
        instance.replicated_at = now
    return bool(updated)


def object_write_for_ingest(clinic: Clinic, source: BinaryIO, object_uuid: uuid.UUID) -> hooks.WrittenObject:
    """Store an ingested file: primary only (``async``), or both stores in parallel (``sync``).

    Registered as ingest's object writer at start-up. In ``sync`` mode a replica failure does not fail the
    upload: it is logged, admins are alerted, and the instance stays pending for the worker and the sweep
    (``replicated_at`` is None). A primary failure raises, as always.
    """
    if replication_mode() != SYNC:
        # Ingest syncs the batch's folder once, before indexing (folder_pending).
        stored = objects.object_put(clinic=clinic, source=source, object_uuid=object_uuid, folder_sync=False)
        return hooks.WrittenObject(stored, folder_pending=True)
    if cache.get(REPLICA_DOWN_CACHE_KEY):
        # The replica failed moments ago: do not make every upload wait for its timeout meanwhile.
        return hooks.WrittenObject(objects.object_put(clinic=clinic, source=source, object_uuid=object_uuid))
    stored, replica_error = mirror.object_put_mirrored(clinic=clinic, source=source, object_uuid=object_uuid)
    if replica_error is None:
        return hooks.WrittenObject(stored, replicated_at=timezone.now())
    cache.set(REPLICA_DOWN_CACHE_KEY, 1, timeout=REPLICA_DOWN_SECONDS)
    logger.warning("Synchronous replica write of %s failed; left for the sweep: %s", stored.key, replica_error)
    alerts.replica_unreachable_alert(clinic=clinic, error=str(replica_error))
    return hooks.WrittenObject(stored)


def instances_replication_start(clinic: Clinic, instances: Sequence[Instance]) -> None:
    """Start replication of a freshly committed batch; registered as an ingest after-commit hook.

    Instances the sync writer already copied only need the clinic manifest on the replica; in async mode
    the others go to a worker in one message for the whole batch (``instances_replicate``). They are not
    marked as queued: a fresh row (``replication_queued_at`` None) already means "queued by its ingest at
    ``stored_at``", committed with the index rows, so no statement is spent per batch here, and the sweep
    queues it again once it is still pending after REPLICATION_SWEEP_AGE_SECONDS (that message lost).
    """
    pending = [i.pk for i in instances if i.replicated_at is None]
    if len(pending) < len(instances):
        try:
            clinic_manifest_replicate(clinic=clinic)
        except StorageUnavailable as exc:
            logger.warning("Clinic manifest not replicated yet: %s", exc)
        # The sync writer put these objects on the replica before the commit: their index sidecar can go
        # now, from a worker, so the upload does not wait for one more replica write.
        current_app.tasks[INDEX_SIDECAR_TASK].delay(
            clinic_id=clinic.pk, instance_ids=[i.pk for i in instances if i.replicated_at is not None]
        )
    # In sync mode a pending instance means the replica just failed: the sweep copies it once the replica
    # answers again, rather than a message retrying against a store known to be down.
    if pending and replication_mode() != SYNC:
        replication_queue(clinic_id=clinic.pk, instance_ids=pending, mark=False)


def replication_queue(*, clinic_id: int, instance_ids: Sequence[int], mark: bool = True) -> None:
    """Queue the copy of these instances, one message per batch, and remember when they were queued.

    ``mark=False`` (ingest's own message) leaves ``replication_queued_at`` None: see ``pending_instances``.
    """
    for start in range(0, len(instance_ids), REPLICATION_BATCH):
        chunk = list(instance_ids[start : start + REPLICATION_BATCH])
        if mark:
            Instance.objects.for_clinic(clinic_id).filter(pk__in=chunk).update(replication_queued_at=timezone.now())
        # Looked up by its explicit name: the task module imports this one, not the other way round.
        current_app.tasks[INSTANCES_REPLICATE_TASK].delay(clinic_id=clinic_id, instance_ids=chunk)


def instances_replicate(*, clinic: Clinic, instance_ids: Sequence[int]) -> int:
    """Copy a batch of instances to the replica; returns how many were copied now (others were already).

    The copies run ``REPLICATION_COPY_THREADS`` at a time (an S3 PUT mostly waits for the network), and the
    instances copied are marked in one UPDATE once all their PUTs have returned: a worker killed before
    leaves them pending, to be copied again (same key, same bytes). A store error is raised after the
    others are marked, so the task's retry copies only what is still missing.
    """
    rows = list(
        Instance.objects.for_clinic(clinic)
        .filter(pk__in=list(instance_ids), replicated_at=None)
        .only("pk", "object_key")
    )
    if not rows:
        return 0
    clinic_manifest_replicate(clinic=clinic)
    copied: list[int] = []
    failure: StorageUnavailable | None = None

    def copy(instance: Instance) -> Instance:
        object_copy(key=instance.object_key)
        return instance

    threads = max(1, min(settings.REPLICATION_COPY_THREADS, len(rows)))
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="replicate") as pool:
        for instance, future in [(instance, pool.submit(copy, instance)) for instance in rows]:
            try:
                copied.append(future.result().pk)
            except ObjectMissing:
                # Not retried: primary lost the object. Verification/restore deal with it; say so loudly.
                logger.error("Cannot replicate %s: the primary store has no such object.", instance.object_key)
            except StorageUnavailable as exc:
                failure = failure or exc
    marked: list[int] = []
    if copied:
        # Conditional: replicated_at keeps the time of the first successful copy (a redelivered message
        # or the sweep's copy running at the same time); the rows marked now carry this run's time.
        now = timezone.now()
        rows_copied = Instance.objects.for_clinic(clinic).filter(pk__in=copied)
        if rows_copied.filter(replicated_at=None).update(replicated_at=now):
            marked = list(rows_copied.filter(replicated_at=now).values_list("pk", flat=True))
    if marked:
        # Their objects are durable on the replica now (put returns once they are): describe them for a
        # rebuild. Only those marked here: the other run writes the sidecar of its own.
        index_sidecar.index_sidecar_publish_logged(clinic=clinic, instance_ids=marked)
    if failure is not None:
        raise failure
    return len(marked)


def pending_instances(*, older_than: timedelta, requeue_after: timedelta = REQUEUE_AFTER) -> Iterator[Instance]:
    """Instances still not on the replica after ``older_than`` whose message is older than ``requeue_after``.

    ``replication_queued_at`` is when the sweep last queued the instance; None means only its ingest
    queued it, at ``stored_at`` (with the index commit): that message counts as lost once ``older_than``
    has passed, not ``requeue_after`` (the sweep's own messages wait behind a backlog it may have made).
    """
    # Cross-clinic maintenance query (the sweep covers every clinic), served by instance_pending_replica.
    now = timezone.now()
    return (
        Instance.objects.filter(replicated_at=None, stored_at__lte=now - older_than)
        .filter(Q(replication_queued_at=None) | Q(replication_queued_at__lte=now - requeue_after))
        .order_by("stored_at")
        .only("pk", "clinic_id")
        .iterator()
    )


def replication_sweep(
    *, older_than: timedelta | None = None, limit: int | None = None, requeue_after: timedelta | None = None
) -> int:
    """Queue replication of every instance still pending after a minute; returns how many were queued.

    An instance whose message was queued less than ``requeue_after`` ago (REPLICATION_REQUEUE_SECONDS,
    default 10 minutes: a message that long unprocessed is taken as lost) is left alone (its message is on its
    way), so the sweep never duplicates queued work; messages carry up to REPLICATION_BATCH instances of
    one clinic and alternate between clinics, so one clinic's backlog does not delay the others. Nothing
    is queued while the replica is unreachable (the queue would only fill up); the lag alert
    (``alerts.backup_health_check``) tells people instead.
    """
    older_than = older_than if older_than is not None else timedelta(seconds=settings.REPLICATION_SWEEP_AGE_SECONDS)
    limit = limit if limit is not None else settings.REPLICATION_SWEEP_LIMIT
    if requeue_after is None:
        requeue_after = timedelta(seconds=getattr(settings, "REPLICATION_REQUEUE_SECONDS", 600))
    try:
        stores.get_store("replica").check()
    except Exception as exc:  # noqa: BLE001 - any failure means "replica down", retried next minute
        logger.warning("Replication sweep skipped: the replica store is unreachable: %s", exc)
        return 0
    by_clinic: dict[int, list[int]] = defaultdict(list)
    queued = 0
    for instance in pending_instances(older_than=older_than, requeue_after=requeue_after):
        by_clinic[instance.clinic_id].append(instance.pk)
        queued += 1
        if queued >= limit:
            break
    # Round robin: the first batch of every clinic goes on the queue before any clinic's second one.
    chunks = {
        clinic_id: [ids[i : i + REPLICATION_BATCH] for i in range(0, len(ids), REPLICATION_BATCH)]
        for clinic_id, ids in by_clinic.items()
    }
    for round_chunks in itertools.zip_longest(*chunks.values()):
        for clinic_id, chunk in zip(chunks, round_chunks, strict=True):
            if chunk:
                replication_queue(clinic_id=clinic_id, instance_ids=chunk)
    if queued:
        logger.info("Replication sweep queued %d pending instances.", queued)
    clinic_keys_replicate(created_since=timezone.now() - timedelta(hours=2))
    return queued


def clinic_keys_replicate(*, clinic: Clinic | None = None, created_since: Any = None, force: bool = False) -> int:
    """Make sure every clinic key document is on the replica; returns how many were written.

    The archive publishes key documents to both stores when a key is created or rotated; this catches
    a replica write that failed then. ``force`` rewrites them all (after a rotation, say).
    """
    replica = stores.get_store("replica")
    # Unscoped when clinic is None: the sweep covers every clinic's keys.
    rows = ClinicKey.objects.for_clinic(clinic) if clinic is not None else ClinicKey.objects.all()
    if created_since is not None:
        rows = rows.filter(created_at__gte=created_since)
    written = 0
    for row in rows.select_related("clinic").iterator():
        object_key = clinic_key_object_key(clinic=row.clinic, key_id=row.key_id)
        try:
            if not force and replica.exists(object_key):
                continue
            archive_keys.clinic_key_publish(row, store_names=("replica",))
            written += 1
        except StorageUnavailable as exc:
            logger.warning("Could not replicate clinic key document %s: %s", object_key, exc)
    return written


def clinic_manifest(clinic: Clinic) -> dict[str, Any]:
    """What the replica needs to recreate the clinic row after losing the database (no patient data)."""
    return {
        "format": "pacs-portal clinic manifest",
        "version": 1,
        "uuid": str(clinic.uuid),
        "name": clinic.name,
        "slug": clinic.slug,
        "ae_title": clinic.ae_title,
        "quota_bytes": clinic.quota_bytes,
        "created_at": clinic.created_at.isoformat(),
    }


def clinic_manifest_replicate(*, clinic: Clinic, force: bool = False) -> bool:
    """Write the clinic's manifest to the replica when it changed; True if written."""
    body = json.dumps(clinic_manifest(clinic), sort_keys=True).encode()
    digest = hashlib.sha256(body).hexdigest()
    cache_key = f"backup:manifest:{clinic.pk}"
    if not force and cache.get(cache_key) == digest:
        return False
    stores.get_store("replica").put(clinic_manifest_key(clinic), io.BytesIO(body))
    cache.set(cache_key, digest, timeout=24 * 3600)
    return True


def replica_reconcile(*, clinic: Clinic) -> dict[str, int]:
    """Compare the two stores for one clinic and copy to the replica whatever is missing there.

    Catches objects the index does not track (thumbnails, key objects) and replica objects lost after
    they were marked replicated (those instances are marked pending again, and re-copied now).
    """
    primary = stores.get_store("primary")
    replica = stores.get_store("replica")
    prefix = clinic_prefix(clinic)
    on_replica = set(replica.list(prefix))
    tracked = dict(Instance.objects.for_clinic(clinic).values_list("object_key", "replicated_at"))
    thumbnails = set(
        Series.objects.for_clinic(clinic).exclude(thumbnail_key="").values_list("thumbnail_key", flat=True)
    )
    copied = lost = 0
    for key in primary.list(prefix):
        if key in on_replica:
            continue
        if key.startswith(f"{prefix}objects/") and key not in tracked and key not in thumbnails:
            continue  # an orphan of a failed ingest, not part of the archive
        if tracked.get(key) is not None:
            lost += 1
        object_copy(key=key)
        copied += 1
    if lost:
        # Their replica copies vanished: the copies above restored them; the verifier re-checks them.
        Instance.objects.for_clinic(clinic).filter(object_key__in=[k for k in tracked if k not in on_replica]).update(
            replica_verified_at=None
        )
    clinic_keys_replicate(clinic=clinic, force=True)
    clinic_manifest_replicate(clinic=clinic, force=True)
    return {"copied": copied, "lost_on_replica": lost}


def replica_object_purge(*, key: str) -> None:
    """Delete an object from the replica (after the trash period), with the replica's own credentials.

    Only the ``replica-admin`` worker runs this (see README "Backup and recovery"): the web tier holds a
    put-only replica credential. With versioning and Object Lock, the delete adds a delete marker; the
    locked versions stay until their retention ends and a lifecycle rule expires them.
    """
    stores.get_store("replica").delete(key)


# --- Replica protection: versioning and Object Lock (S3 only) ---------------------------------------


def _replica_s3() -> tuple[Any, str] | None:
    """A boto3 client and the bucket name for the replica, or None when the replica is a local folder."""
    # Not a cycle: boto3 (about 0.1 s of CPU) is loaded only where the replica is S3, as in studies.archive.
    import boto3

    url = urlparse(settings.REPLICA_STORE_URL)
    if url.scheme != "s3":
        return None
    options = {name: values[0] for name, values in parse_qs(url.query).items()}
    client = boto3.client(
        "s3",
        endpoint_url=options.get("endpoint_url"),
        region_name=options.get("region_name"),
        aws_access_key_id=settings.REPLICA_STORE_ACCESS_KEY_ID or None,
        aws_secret_access_key=settings.REPLICA_STORE_SECRET_ACCESS_KEY or None,
    )
    return client, url.netloc


def replica_protection_apply(*, retention_days: int | None = None, mode: str | None = None) -> dict[str, Any]:
    """Turn on versioning on the replica bucket and, if retention_days > 0, default Object Lock retention.

    Object Lock can only be used on a bucket created with it enabled; that is reported as an error. Run by
    the operator (``manage.py replica_protect``) with the replica's admin credentials.
    """
    found = _replica_s3()
    if found is None:
        raise ValueError("The replica is a local folder: versioning and Object Lock need an S3 replica.")
    client, bucket = found
    retention_days = settings.REPLICA_OBJECT_LOCK_DAYS if retention_days is None else retention_days
    mode = mode or settings.REPLICA_OBJECT_LOCK_MODE
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    if retention_days > 0:
        client.put_object_lock_configuration(
            Bucket=bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": mode, "Days": retention_days}},
            },
        )
    return replica_protection_status()


def replica_protection_status() -> dict[str, Any]:
    """Versioning and Object Lock state of the replica bucket, for the backup page and the command."""
    found = _replica_s3()
    if found is None:
        return {"kind": "local", "versioning": "unsupported", "object_lock": "unsupported", "retention_days": 0}
    client, bucket = found
    try:
        versioning = client.get_bucket_versioning(Bucket=bucket).get("Status", "Disabled")
    except Exception as exc:  # noqa: BLE001 - shown as-is on the page
        return {
            "kind": "s3",
            "versioning": f"unknown ({type(exc).__name__})",
            "object_lock": "unknown",
            "retention_days": 0,
        }
    lock = "Disabled"
    days = 0
    lock_mode = ""
    try:
        config = client.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
        lock = config.get("ObjectLockEnabled", "Disabled")
        retention = config.get("Rule", {}).get("DefaultRetention", {})
        days = int(retention.get("Days") or 0)
        lock_mode = retention.get("Mode", "")
    except Exception:  # noqa: BLE001 - no Object Lock configuration on this bucket
        pass
    return {"kind": "s3", "versioning": versioning, "object_lock": lock, "retention_days": days, "mode": lock_mode}

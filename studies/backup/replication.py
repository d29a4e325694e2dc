"""Replication: byte-for-byte copies of encrypted objects from the primary store to the replica.

Objects are copied still encrypted, so the replica never sees a plaintext byte and the replica alone,
with the master key, can rebuild everything (objects are self-describing; clinic keys are stored as
objects under ``clinics/<uuid>/keys/`` and a small ``clinic.json`` manifest names each clinic).

Flow: ``instance_replication_start`` runs when an ingest commits. In ``async`` mode (default) it queues
``studies.tasks.instance_replicate``; in ``sync`` mode it copies at once, before the upload is
acknowledged, and on failure leaves the instance pending and alerts. The per-minute sweep re-queues any
instance still pending after a minute, so a lost queue message never loses a backup.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlparse

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from studies.archive import objects, stores
from studies.archive.errors import ObjectMissing, StorageUnavailable
from studies.models import ClinicKey, Instance, Series
from tenants.models import Clinic

logger = logging.getLogger(__name__)

SYNC = "sync"
ASYNC = "async"
# After a failed synchronous replica write, uploads skip the replica for this long (the sweep copies them).
REPLICA_DOWN_CACHE_KEY = "backup:replica-down"
REPLICA_DOWN_SECONDS = 30


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
    updated = Instance.objects.for_clinic(instance.clinic_id).filter(pk=instance.pk, replicated_at=None).update(
        replicated_at=now
    )
    if updated:
        instance.replicated_at = now
    return bool(updated)


# Keys that object_put_for_ingest wrote to both stores (or failed to mirror) in this thread, waiting for
# instance_replication_start to mark (or queue) them once the index rows are committed.
_mirror_state = threading.local()


def _mirror_sets() -> tuple[set[str], set[str]]:
    if not hasattr(_mirror_state, "done"):
        _mirror_state.done, _mirror_state.failed = set(), set()
    return _mirror_state.done, _mirror_state.failed


def object_put_for_ingest(*, clinic: Clinic, source: BinaryIO, object_uuid: uuid.UUID) -> objects.StoredObject:
    """Store an ingested file: primary only (``async``), or both stores in parallel (``sync``).

    In ``sync`` mode a replica failure does not fail the upload: it is logged, admins are alerted, and
    the instance stays pending for the worker and the sweep. A primary failure raises, as always.
    """
    if replication_mode() != SYNC:
        return objects.object_put(clinic=clinic, source=source, object_uuid=object_uuid)
    from studies.backup import alerts, mirror

    done, failed = _mirror_sets()
    if cache.get(REPLICA_DOWN_CACHE_KEY):
        # The replica failed moments ago: do not make every upload wait for its timeout meanwhile.
        stored = objects.object_put(clinic=clinic, source=source, object_uuid=object_uuid)
        failed.add(stored.key)
        return stored
    stored, replica_error = mirror.object_put_mirrored(clinic=clinic, source=source, object_uuid=object_uuid)
    if len(done) + len(failed) > 10000:
        # Keys of ingests that failed after the write are never claimed; do not let them pile up.
        done.clear()
        failed.clear()
    if replica_error is None:
        done.add(stored.key)
    else:
        failed.add(stored.key)
        cache.set(REPLICA_DOWN_CACHE_KEY, 1, timeout=REPLICA_DOWN_SECONDS)
        logger.warning("Synchronous replica write of %s failed; left for the sweep: %s", stored.key, replica_error)
        alerts.replica_unreachable_alert(clinic=clinic, error=str(replica_error))
    return stored


def _mark_replicated(instance: Instance) -> None:
    now = timezone.now()
    Instance.objects.for_clinic(instance.clinic_id).filter(pk=instance.pk, replicated_at=None).update(
        replicated_at=now
    )
    instance.replicated_at = instance.replicated_at or now


def instance_replication_start(*, instance: Instance) -> None:
    """Start replication of a freshly committed instance; call it from ``transaction.on_commit``.

    ``sync`` mode: if ``object_put_for_ingest`` already wrote both stores, only the mark is left;
    otherwise the object is copied now, before the caller acknowledges the upload. If the replica cannot
    be reached the upload still succeeds, the instance stays pending for the sweep and admins are alerted.
    ``async`` mode (and the sync fallback) queues ``instance_replicate`` for a worker.
    """
    from studies import tasks

    done, failed = _mirror_sets()
    if instance.object_key in done:
        done.discard(instance.object_key)
        _mark_replicated(instance)
        try:
            clinic_manifest_replicate(clinic=instance.clinic)
        except StorageUnavailable as exc:
            logger.warning("Clinic manifest not replicated yet: %s", exc)
        return
    if instance.object_key in failed:
        failed.discard(instance.object_key)
    elif replication_mode() == SYNC:
        try:
            instance_replicate(instance=instance)
            return
        except (StorageUnavailable, ObjectMissing, OSError) as exc:
            logger.warning("Synchronous replication of %s failed; left for the sweep: %s", instance.object_key, exc)
            from studies.backup import alerts

            alerts.replica_unreachable_alert(clinic=instance.clinic, error=str(exc))
    tasks.instance_replicate.delay(clinic_id=instance.clinic_id, instance_id=instance.pk)


def pending_instances(*, older_than: timedelta) -> Iterator[Instance]:
    # Cross-clinic maintenance query (the sweep covers every clinic), served by instance_pending_replica.
    cutoff = timezone.now() - older_than
    return (
        Instance.objects.filter(replicated_at=None, stored_at__lte=cutoff)
        .order_by("stored_at")
        .only("pk", "clinic_id")
        .iterator()
    )


def replication_sweep(*, older_than: timedelta | None = None, limit: int | None = None) -> int:
    """Queue replication of every instance still pending after a minute; returns how many were queued.

    Nothing is queued while the replica is unreachable (the queue would only fill up); the lag alert
    (``alerts.backup_health_check``) tells people instead.
    """
    from studies import tasks

    older_than = older_than if older_than is not None else timedelta(seconds=settings.REPLICATION_SWEEP_AGE_SECONDS)
    limit = limit if limit is not None else settings.REPLICATION_SWEEP_LIMIT
    try:
        stores.get_store("replica").check()
    except Exception as exc:  # noqa: BLE001 - any failure means "replica down", retried next minute
        logger.warning("Replication sweep skipped: the replica store is unreachable: %s", exc)
        return 0
    queued = 0
    for instance in pending_instances(older_than=older_than):
        tasks.instance_replicate.delay(clinic_id=instance.clinic_id, instance_id=instance.pk)
        queued += 1
        if queued >= limit:
            break
    if queued:
        logger.info("Replication sweep queued %d pending instances.", queued)
    clinic_keys_replicate(created_since=timezone.now() - timedelta(hours=2))
    return queued


def clinic_keys_replicate(*, clinic: Clinic | None = None, created_since: Any = None, force: bool = False) -> int:
    """Make sure every clinic key document is on the replica; returns how many were written.

    The archive publishes key documents to both stores when a key is created or rotated; this catches
    a replica write that failed then. ``force`` rewrites them all (after a rotation, say).
    """
    from studies.archive import keys as archive_keys

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
    import io

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
    thumbnails = set(Series.objects.for_clinic(clinic).exclude(thumbnail_key="").values_list("thumbnail_key", flat=True))
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
        return {"kind": "s3", "versioning": f"unknown ({type(exc).__name__})", "object_lock": "unknown",
                "retention_days": 0}
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

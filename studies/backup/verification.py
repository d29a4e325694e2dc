"""Verification: read replica objects back, decrypt them and compare the plaintext SHA-256 with the index.

Every replicated instance is verified at least once per ``BACKUP_VERIFY_INTERVAL_DAYS`` (default 7),
newest first (recent images are the ones most likely still needed, and the most recently written).
Results go on the instance (``replica_verified_at`` / ``replica_verify_failed_at``) and a
``VerificationRun`` row summarises each pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Min, Q, QuerySet
from django.utils import timezone

from studies.archive import objects
from studies.archive.errors import ArchiveError, ObjectMissing, StorageUnavailable
from studies.backup import alerts, replication
from studies.models import Instance, VerificationRun
from tenants.models import Clinic

logger = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectCheck:
    ok: bool
    problem: str = ""  # "", "missing", "corrupt", "mismatch", "unavailable"
    detail: str = ""


def object_digest(*, clinic: Clinic, key: str, store: str) -> tuple[str, int]:
    """Decrypt a stored object fully and return (sha256 hex, plaintext size); streamed, constant memory."""
    digest = hashlib.sha256()
    size = 0
    with contextlib.closing(objects.object_open(clinic=clinic, key=key, store=store)) as stream:
        while chunk := stream.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def object_check(*, clinic: Clinic, key: str, sha256: str, size_bytes: int, store: str) -> ObjectCheck:
    """Check that a store holds an object that decrypts to exactly the indexed plaintext.

    StorageUnavailable is raised, not reported: an unreachable store says nothing about the object.
    """
    try:
        actual, size = object_digest(clinic=clinic, key=key, store=store)
    except ObjectMissing as exc:
        return ObjectCheck(False, "missing", str(exc))
    except StorageUnavailable:
        raise
    except (ArchiveError, ValueError) as exc:
        return ObjectCheck(False, "corrupt", str(exc))
    if actual != sha256 or size != size_bytes:
        return ObjectCheck(False, "mismatch", "The object decrypts, but not to the indexed content.")
    return ObjectCheck(True)


def instance_verify(*, instance: Instance) -> ObjectCheck:
    """Verify one instance's replica copy and record the result on the instance."""
    result = object_check(
        clinic=instance.clinic,
        key=instance.object_key,
        sha256=instance.sha256,
        size_bytes=instance.size_bytes,
        store="replica",
    )
    now = timezone.now()
    rows = Instance.objects.for_clinic(instance.clinic_id).filter(pk=instance.pk)
    if result.ok:
        rows.update(replica_verified_at=now, replica_verify_failed_at=None)
        instance.replica_verified_at, instance.replica_verify_failed_at = now, None
    else:
        logger.error(
            "Backup verification failed for object %s (clinic %s): %s %s",
            instance.object_key, instance.clinic.uuid, result.problem, result.detail,
        )
        rows.update(replica_verify_failed_at=now)
        instance.replica_verify_failed_at = now
    return result


def instances_due(*, clinic: Clinic | None = None, interval: timedelta | None = None) -> QuerySet[Instance]:
    """Replicated instances not verified within the interval (or failed since), newest first."""
    interval = interval if interval is not None else timedelta(days=settings.BACKUP_VERIFY_INTERVAL_DAYS)
    cutoff = timezone.now() - interval
    # Cross-clinic when clinic is None: verification is an operator-level maintenance job.
    queryset = Instance.objects.for_clinic(clinic) if clinic is not None else Instance.objects.all()
    return (
        queryset.filter(replicated_at__isnull=False)
        .filter(
            Q(replica_verified_at=None)
            | Q(replica_verified_at__lt=cutoff)
            | Q(replica_verify_failed_at__isnull=False)
        )
        .select_related("clinic")
        .order_by("-stored_at", "-pk")
    )


def verification_run(
    *,
    clinic: Clinic | None = None,
    limit: int | None = None,
    interval: timedelta | None = None,
    source: str = "schedule",
    progress: Callable[[int, int, Instance, ObjectCheck], None] | None = None,
) -> VerificationRun:
    """Verify up to ``limit`` due instances (all if None); record a VerificationRun; alert on failures."""
    run = VerificationRun.objects.create(clinic=clinic, source=source)
    due = instances_due(clinic=clinic, interval=interval)
    total = due.count() if limit is None else min(limit, due.count())
    failures: dict[int, list[str]] = {}
    # Materialise ids first: verifying updates the very fields the query filters on.
    ids = list(due.values_list("pk", flat=True)[:total])
    for position, pk in enumerate(ids, start=1):
        instance = Instance.objects.select_related("clinic").filter(pk=pk).first()
        if instance is None:
            continue  # purged meanwhile
        try:
            result = instance_verify(instance=instance)
        except StorageUnavailable as exc:
            logger.warning("Verification stopped: the replica store is unreachable: %s", exc)
            alerts.replica_unreachable_alert(clinic=instance.clinic, error=str(exc))
            break
        run.checked += 1
        if not result.ok:
            run.failed += 1
            failures.setdefault(instance.clinic_id, []).append(result.problem)
            # Heal from primary when the primary copy is good; the replica keeps the bad version too.
            _replica_heal(instance=instance)
        if progress is not None:
            progress(position, total, instance, result)
    run.finished_at = timezone.now()
    run.save(update_fields=["checked", "failed", "finished_at"])
    for clinic_id, problems in failures.items():
        alerts.verification_failed_alert(clinic=Clinic.objects.get(pk=clinic_id), count=len(problems))
    return run


def _replica_heal(*, instance: Instance) -> None:
    try:
        primary = object_check(
            clinic=instance.clinic, key=instance.object_key, sha256=instance.sha256,
            size_bytes=instance.size_bytes, store="primary",
        )
        if primary.ok:
            replication.object_copy(key=instance.object_key)
            logger.info("Replica copy of %s rewritten from a verified primary copy.", instance.object_key)
    except StorageUnavailable as exc:
        logger.warning("Could not heal replica copy of %s: %s", instance.object_key, exc)


def last_full_verification(*, clinic: Clinic) -> datetime | None:
    """The time since which every replicated instance of the clinic has been verified; None if never."""
    instances = Instance.objects.for_clinic(clinic).filter(replicated_at__isnull=False)
    if instances.filter(replica_verified_at=None).exists():
        return None
    return instances.aggregate(oldest=Min("replica_verified_at"))["oldest"]

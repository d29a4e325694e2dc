"""Failover repair, restore (replica -> primary) and rebuilding the database index from the replica.

All three only ever copy objects that decrypt and authenticate, so a damaged replica copy is never
written over primary. All are resumable: an object already good on primary (or already indexed) is
skipped, so an interrupted run is simply started again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from celery import current_app
from django.db import IntegrityError, close_old_connections, connections, transaction
from django.db.models import F
from django.utils import timezone

from studies.archive import objects, stores
from studies.archive.errors import ArchiveError, ObjectMissing, StorageUnavailable
from studies.archive.objects import StoredObject
from studies.backup import index_sidecar, replication, study_state
from studies.backup.verification import ObjectCheck, object_check
from studies.errors import InvalidDicom
from studies.ingest.index import IndexItem, instances_index_write
from studies.models import ClinicKey, Instance, QuarantinedInstance, Series
from tenants.models import Clinic

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]

# Queued by name from object_repair_schedule: studies.backup.tasks imports this module.
OBJECT_REPAIR_TASK = "studies.backup.tasks.object_repair"

_OBJECT_KEY = re.compile(r"^clinics/(?P<clinic>[0-9a-f-]{36})/objects/(?P<object>[0-9a-f-]{36})$")
_KEY_OBJECT = re.compile(r"^clinics/(?P<clinic>[0-9a-f-]{36})/keys/(?P<key_id>[^/]+)$")


# --- Repair of one object (failover) ---------------------------------------------------------------


def object_repair(*, clinic: Clinic, key: str) -> str:
    """Rewrite one primary object from the replica after a failed primary read.

    Returns "healthy" (primary was fine after all), "repaired", or "unrecoverable" (the replica copy
    does not decrypt either; nothing is written). Raises StorageUnavailable so the task retries.
    """
    instance = Instance.objects.for_clinic(clinic).filter(object_key=key).first()
    expected = (instance.sha256, instance.size_bytes) if instance is not None else None
    if _store_good(clinic=clinic, key=key, store="primary", expected=expected).ok:
        return "healthy"
    replica = _store_good(clinic=clinic, key=key, store="replica", expected=expected)
    if not replica.ok:
        logger.error("Cannot repair %s: the replica copy is %s too.", key, replica.problem)
        return "unrecoverable"
    replication.object_copy(key=key, source="replica", target="primary")
    if not _store_good(clinic=clinic, key=key, store="primary", expected=expected).ok:
        logger.error("Primary copy of %s still fails after the repair.", key)
        return "unrecoverable"
    logger.warning("Primary object %s repaired from the replica.", key)
    return "repaired"


def _store_good(*, clinic: Clinic, key: str, store: str, expected: tuple[str, int] | None) -> ObjectCheck:
    if expected is not None:
        return object_check(clinic=clinic, key=key, sha256=expected[0], size_bytes=expected[1], store=store)
    try:
        with contextlib.closing(objects.object_open(clinic=clinic, key=key, store=store)) as stream:
            while stream.read(1024 * 1024):
                pass
    except ObjectMissing as exc:
        return ObjectCheck(False, "missing", str(exc))
    except StorageUnavailable:
        raise
    except (ArchiveError, ValueError) as exc:
        return ObjectCheck(False, "corrupt", str(exc))
    return ObjectCheck(True)


# --- Restore: rewrite primary from the replica -----------------------------------------------------


@dataclass
class RestoreReport:
    checked: int = 0
    good: int = 0
    restored: int = 0
    unrecoverable: list[str] = field(default_factory=list)
    other_objects_copied: int = 0


def _restore_one(clinic: Clinic, key: str, sha256: str, size_bytes: int) -> str:
    try:
        return object_repair_values(clinic=clinic, key=key, expected=(sha256, size_bytes))
    finally:
        close_old_connections()


def object_repair_values(*, clinic: Clinic, key: str, expected: tuple[str, int]) -> str:
    """Like object_repair with the indexed digest given (no database access; used by worker threads)."""
    if _store_good(clinic=clinic, key=key, store="primary", expected=expected).ok:
        return "healthy"
    if not _store_good(clinic=clinic, key=key, store="replica", expected=expected).ok:
        return "unrecoverable"
    replication.object_copy(key=key, source="replica", target="primary")
    return "repaired" if _store_good(clinic=clinic, key=key, store="primary", expected=expected).ok else "unrecoverable"


def clinic_restore(*, clinic: Clinic, jobs: int = 4, progress: Progress | None = None) -> RestoreReport:
    """Rewrite every missing or corrupt primary object of the clinic from the replica.

    Resumable: objects that verify on primary are skipped. Key objects, thumbnails and other objects
    found only on the replica are copied back too.
    """
    report = RestoreReport()
    rows = list(
        Instance.objects.for_clinic(clinic).order_by("pk").values_list("object_key", "sha256", "size_bytes")
    )
    total = len(rows)
    say = progress or (lambda message: None)
    say(f"{clinic.slug}: checking {total} instances")
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = pool.map(lambda row: _restore_one(clinic, *row), rows)
        for (key, _sha, _size), outcome in zip(rows, results, strict=True):
            report.checked += 1
            if outcome == "healthy":
                report.good += 1
            elif outcome == "repaired":
                report.restored += 1
            else:
                report.unrecoverable.append(key)
            if report.checked % 100 == 0 or report.checked == total:
                say(
                    f"{clinic.slug}: {report.checked}/{total} checked, {report.restored} restored, "
                    f"{len(report.unrecoverable)} unrecoverable"
                )
    # Objects the index does not track (clinic keys, thumbnails, manifest): copy if missing on primary.
    primary = stores.get_store("primary")
    indexed = {row[0] for row in rows}
    for key in stores.get_store("replica").list(replication.clinic_prefix(clinic)):
        if key in indexed or primary.exists(key):
            continue
        replication.object_copy(key=key, source="replica", target="primary")
        report.other_objects_copied += 1
    say(f"{clinic.slug}: {report.other_objects_copied} other objects (keys, thumbnails) copied back")
    return report


# --- Rebuild the index from the replica alone --------------------------------------------------------


@dataclass
class RebuildReport:
    clinics_created: int = 0
    keys_restored: int = 0
    objects_seen: int = 0
    already_indexed: int = 0
    indexed: int = 0
    skipped_not_dicom: int = 0
    trashed_again: int = 0
    failed: list[str] = field(default_factory=list)
    # How the indexed instances were learnt: from index sidecars (no parsing) or by decoding the object.
    from_sidecars: int = 0
    decoded: int = 0
    sidecars_read: int = 0
    sidecars_unreadable: int = 0
    # Sidecar entries not used: the object's stored size (or, with verify, its content) disagreed.
    sidecar_mismatches: int = 0


def replica_clinic_uuids() -> list[uuid.UUID]:
    found: set[uuid.UUID] = set()
    for key in stores.get_store("replica").list("clinics/"):
        parts = key.split("/")
        if len(parts) >= 3:
            with contextlib.suppress(ValueError):
                found.add(uuid.UUID(parts[1]))
    return sorted(found, key=str)


def clinic_recover(*, clinic_uuid: uuid.UUID) -> tuple[Clinic, bool]:
    """Return the clinic with this uuid, recreating it from the replica's clinic.json if it is gone."""
    clinic = Clinic.objects.filter(uuid=clinic_uuid).first()
    if clinic is not None:
        return clinic, False
    manifest: dict[str, Any] = {}
    key = f"clinics/{clinic_uuid}/clinic.json"
    try:
        with contextlib.closing(stores.get_store("replica").open(key)) as stream:
            manifest = json.loads(stream.read(1024 * 1024))
    except (ObjectMissing, ValueError):
        logger.warning("No usable manifest for clinic %s; it gets a placeholder name.", clinic_uuid)
    short = str(clinic_uuid)[:8]
    slug = manifest.get("slug") or f"recovered-{short}"
    if Clinic.objects.filter(slug=slug).exists():
        slug = f"{slug[:40]}-{short}"
    ae_title = (manifest.get("ae_title") or f"R{short}".upper())[:16]
    if Clinic.objects.filter(ae_title=ae_title).exists():
        ae_title = f"R{short}".upper()[:16]
    clinic = Clinic.objects.create(
        uuid=clinic_uuid,
        name=manifest.get("name") or f"Recovered clinic {short}",
        slug=slug,
        ae_title=ae_title,
        quota_bytes=int(manifest.get("quota_bytes") or 0),
    )
    return clinic, True


def clinic_keys_recover(*, clinic: Clinic) -> int:
    """Recreate ClinicKey rows from the replica's key objects (still wrapped by the master key)."""
    from studies.archive import keys as archive_keys

    restored = 0
    for key in stores.get_store("replica").list(f"clinics/{clinic.uuid}/keys/"):
        match = _KEY_OBJECT.match(key)
        if match is None or ClinicKey.objects.filter(key_id=match["key_id"]).exists():
            continue
        with contextlib.closing(stores.get_store("replica").open(key)) as stream:
            body = stream.read(1024 * 1024)
        archive_keys.clinic_key_import(clinic=clinic, document=body)
        restored += 1
    return restored


@dataclass(frozen=True)
class _Decoded:
    """What a rebuild worker learnt from one replica object (plain values: it crosses processes).

    ``verified`` says the object was decrypted and its digest computed here; entries taken from an index
    sidecar without reading the object are not, and are left for the backup verifier.
    """

    key: str
    outcome: str  # "ok", "not_dicom" or "failed"
    parsed: Any = None
    sha256: str = ""
    size: int = 0
    key_id: str = ""
    error: str = ""
    verified: bool = True
    metadata_json: str = ""  # from a sidecar: the header as JSON text, written as it is


def _decode_object(clinic_uuid: uuid.UUID, key: str, clinic_keys: dict[str, bytes], directory: str) -> _Decoded:
    """Decrypt one replica object to a temp file and parse it; touches no database (runs in workers)."""
    from studies.dicom import parse_instance
    from studies.errors import InvalidDicom

    try:
        header, reader = objects.object_open_with_keys(clinic_uuid=clinic_uuid, key=key, clinic_keys=clinic_keys)
        digest = hashlib.sha256()
        size = 0
        fd, path = tempfile.mkstemp(dir=directory, suffix=".dcm")
        try:
            with os.fdopen(fd, "wb") as out, contextlib.closing(reader):
                while chunk := reader.read(1024 * 1024):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            try:
                parsed = parse_instance(path)
            except InvalidDicom:
                return _Decoded(key, "not_dicom")
        finally:
            os.unlink(path)
    except (ArchiveError, ValueError, OSError) as exc:
        return _Decoded(key, "failed", error=str(exc)[:300])
    return _Decoded(key, "ok", parsed=parsed, sha256=digest.hexdigest(), size=size, key_id=header.key_id)


def _digest_object(clinic_uuid: uuid.UUID, key: str, clinic_keys: dict[str, bytes]) -> tuple[str, int] | None:
    """Decrypt one replica object and return (sha256, size) of its plaintext, None when it does not decrypt."""
    try:
        _header, reader = objects.object_open_with_keys(clinic_uuid=clinic_uuid, key=key, clinic_keys=clinic_keys)
        digest = hashlib.sha256()
        size = 0
        with contextlib.closing(reader):
            while chunk := reader.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
    except (ArchiveError, ValueError, OSError):
        return None
    return digest.hexdigest(), size


def _decode_worker_init() -> None:
    # Store clients (boto3 sessions, pooled sockets) must not be shared across a fork: make fresh ones.
    stores._cache.clear()


def _replica_objects(clinic: Clinic) -> dict[str, int]:
    """The clinic's objects on the replica, with their stored sizes, in key order."""
    return {
        key: size
        for key, size in sorted(stores.get_store("replica").list_sizes(f"clinics/{clinic.uuid}/objects/"))
        if _OBJECT_KEY.match(key)
    }


def _prefetched(function: Callable[[str], Any], keys: list[str], *, threads: int = 4) -> Iterator[Any]:
    """Yield ``function(key)`` for each key in order, a few keys ahead (sidecar reads wait on the store)."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rebuild-sidecar") as pool:
        window: list[Any] = []
        for key in keys:
            window.append(pool.submit(function, key))
            if len(window) > threads * 2:
                yield window.pop(0).result()
        for future in window:
            yield future.result()


def index_rebuild(
    *,
    clinic_uuids: list[uuid.UUID] | None = None,
    progress: Progress | None = None,
    jobs: int = 1,
    use_sidecars: bool = True,
    verify: bool = False,
) -> RebuildReport:
    """Rebuild clinics, clinic keys and the patient/study/series/instance index from the replica alone.

    Resumable: objects already in the index are skipped. What the index needs of each instance is read
    from the clinic's index sidecars (``studies.backup.index_sidecar``) for every object on the replica
    that one describes with the right stored size; those instances are left for the backup verifier to
    check (``verify`` decrypts and digests them here instead, without parsing). Every other object is
    decrypted and parsed, in ``jobs`` worker processes when ``jobs`` > 1; objects that decrypt but are
    not DICOM (thumbnails) are skipped and rendered again by the thumbnail task. The database is written
    by this process only. Primary is not touched: run ``restore`` afterwards if primary was lost too.
    """
    from studies.archive import keys as archive_keys

    say = progress or (lambda message: None)
    report = RebuildReport()
    uuids = clinic_uuids if clinic_uuids is not None else replica_clinic_uuids()
    say(f"{len(uuids)} clinics on the replica")
    workdir = tempfile.mkdtemp(prefix="rebuild-index-")
    pool = None
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # Forked workers inherit the configuration; they get keys as arguments and never use the database
        # (and leave with os._exit, so they never close the parent's connection either).
        if not connections["default"].in_atomic_block:
            connections.close_all()
        pool = ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("fork"), initializer=_decode_worker_init
        )
    try:
        for clinic_uuid in uuids:
            clinic, created = clinic_recover(clinic_uuid=clinic_uuid)
            report.clinics_created += int(created)
            report.keys_restored += clinic_keys_recover(clinic=clinic)
            clinic_keys = {
                key_id: archive_keys.clinic_key_for_object(clinic=clinic, key_id=key_id)
                for key_id in ClinicKey.objects.for_clinic(clinic).values_list("key_id", flat=True)
            }
            indexed = set(Instance.objects.for_clinic(clinic).values_list("object_key", flat=True))
            thumbnails = set(Series.objects.for_clinic(clinic).values_list("thumbnail_key", flat=True))
            # Held for review (studies.admission) or discarded: indexing them would file them after all.
            held = set(
                QuarantinedInstance.objects.for_clinic(clinic).exclude(resolution=QuarantinedInstance.Resolution.FILED)
                .values_list("object_key", flat=True)
            )
            listed = _replica_objects(clinic)
            todo = {
                key: size for key, size in listed.items()
                if key not in indexed and key not in thumbnails and key not in held
            }
            report.objects_seen += len(listed)
            report.already_indexed += len(listed) - len(todo)
            say(f"{clinic.slug}: {len(listed)} objects on the replica, {len(listed) - len(todo)} already indexed")
            if use_sidecars and todo:
                _rebuild_from_sidecars(
                    clinic=clinic, todo=todo, clinic_keys=clinic_keys, report=report, pool=pool, verify=verify,
                    say=say,
                )
            _rebuild_by_decoding(
                clinic=clinic, todo=list(todo), clinic_keys=clinic_keys, report=report, pool=pool,
                workdir=workdir, say=say,
            )
            # Trash and purge state recorded in the replica: never bring a trashed or purged study back live.
            states = study_state.study_states_apply(clinic=clinic)
            report.trashed_again += states.trashed
            say(f"{clinic.slug}: {states.trashed} studies back in the trash, {states.purged_instances} purged "
                "instances left out")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def _rebuild_from_sidecars(
    *, clinic: Clinic, todo: dict[str, int], clinic_keys: dict[str, bytes], report: RebuildReport,
    pool: Any, verify: bool, say: Progress,
) -> None:
    """Index the objects of ``todo`` an index sidecar describes, and take them out of ``todo``.

    Only objects listed on the replica are indexed (a sidecar naming an object the replica lacks adds
    nothing), and only when the sidecar's stored size is the object's; the rest stay in ``todo``.
    """
    sidecars = index_sidecar.sidecar_keys(clinic=clinic)
    if not sidecars:
        return
    say(f"{clinic.slug}: {len(sidecars)} index sidecars")

    def read(key: str) -> list[index_sidecar.SidecarEntry] | None:
        [(_key, entries)] = index_sidecar.index_sidecars_read(clinic=clinic, clinic_keys=clinic_keys, sidecars=[key])
        return entries

    batch: list[_Decoded] = []
    covered: set[str] = set()
    for position, entries in enumerate(_prefetched(read, sidecars), start=1):
        if entries is None:
            report.sidecars_unreadable += 1
            continue
        report.sidecars_read += 1
        for entry in entries:
            stored_size = todo.get(entry.key)
            if stored_size is None or entry.key in covered:
                continue  # not on the replica, already indexed, or named by an earlier sidecar
            if stored_size != entry.stored_size or entry.key_id not in clinic_keys:
                report.sidecar_mismatches += 1
                continue  # not the object the sidecar describes: it is decoded instead
            covered.add(entry.key)
            batch.append(_Decoded(
                entry.key, "ok", parsed=entry.parsed, sha256=entry.sha256, size=entry.size_bytes,
                key_id=entry.key_id, verified=False, metadata_json=entry.metadata_json,
            ))
        if len(batch) >= SIDECAR_REBUILD_BATCH or position == len(sidecars):
            if verify:
                batch = _verified(clinic=clinic, batch=batch, clinic_keys=clinic_keys, pool=pool, report=report)
            for decoded in batch:
                del todo[decoded.key]
            report.from_sidecars += len(batch)
            _index_batch(clinic=clinic, batch=batch, report=report)
            say(f"{clinic.slug}: {position}/{len(sidecars)} sidecars, {report.indexed} indexed so far")


def _verified(
    *, clinic: Clinic, batch: list[_Decoded], clinic_keys: dict[str, bytes], pool: Any, report: RebuildReport
) -> list[_Decoded]:
    """Keep the sidecar entries whose object decrypts to the sidecar's sha256 and size, marked verified."""
    arguments = ([clinic.uuid] * len(batch), [d.key for d in batch], [clinic_keys] * len(batch))
    digests = pool.map(_digest_object, *arguments, chunksize=16) if pool else map(_digest_object, *arguments)
    kept = []
    for decoded, digest in zip(batch, digests, strict=True):
        if digest == (decoded.sha256, decoded.size):
            kept.append(replace(decoded, verified=True))
        else:
            report.sidecar_mismatches += 1
    return kept


def _rebuild_by_decoding(
    *, clinic: Clinic, todo: list[str], clinic_keys: dict[str, bytes], report: RebuildReport, pool: Any,
    workdir: str, say: Progress,
) -> None:
    """Decrypt and parse each object of ``todo`` (no sidecar covers it) and index it."""
    if not todo:
        return
    arguments = ([clinic.uuid] * len(todo), todo, [clinic_keys] * len(todo), [workdir] * len(todo))
    results = pool.map(_decode_object, *arguments, chunksize=16) if pool else map(_decode_object, *arguments)
    batch: list[Any] = []
    for position, decoded in enumerate(results, start=1):
        if decoded.outcome == "ok":
            batch.append(decoded)
            report.decoded += 1
            if len(batch) >= REBUILD_BATCH:
                _index_batch(clinic=clinic, batch=batch, report=report)
        elif decoded.outcome == "not_dicom":
            report.skipped_not_dicom += 1
        else:
            logger.error("Cannot decrypt replica object %s: %s", decoded.key, decoded.error)
            report.failed.append(decoded.key)
        if position == len(todo) and batch:
            _index_batch(clinic=clinic, batch=batch, report=report)
        if position % 100 == 0 or position == len(todo):
            say(f"{clinic.slug}: {position}/{len(todo)} objects decoded, {report.indexed} indexed so far")


# Recovered instances indexed per transaction (one bulk insert, one counter update per study and series).
REBUILD_BATCH = 200
# Instances from sidecars per transaction: nothing was parsed for them, so a larger batch costs no latency.
SIDECAR_REBUILD_BATCH = 2000


def _index_batch(*, clinic: Clinic, batch: list[Any], report: RebuildReport) -> None:
    """Index decoded replica objects in one transaction; one by one if the batch as a whole is refused."""
    if not batch:
        return
    try:
        instances_index_create(clinic=clinic, decoded=batch)
        report.indexed += len(batch)
    except (IntegrityError, InvalidDicom):
        for decoded in batch:
            try:
                instance_index_create(
                    clinic=clinic, parsed=decoded.parsed, object_key=decoded.key, key_id=decoded.key_id,
                    sha256=decoded.sha256, size_bytes=decoded.size, verified=getattr(decoded, "verified", True),
                    metadata_json=getattr(decoded, "metadata_json", ""),
                )
            except InvalidDicom as exc:
                # Its series already belongs to another study: report it, rebuild the rest.
                logger.error("Cannot index replica object %s: %s", decoded.key, exc.message)
                report.failed.append(decoded.key)
                continue
            report.indexed += 1
    batch.clear()


@transaction.atomic
def instances_index_create(*, clinic: Clinic, decoded: list[Any]) -> None:
    """Index recovered instances with ingest's batch index writer, and count them in the usage.

    Raises IntegrityError or InvalidDicom (nothing written) when one of them cannot go in with the others.
    """
    now = timezone.now()
    items = []
    for entry in decoded:
        match = _OBJECT_KEY.match(entry.key)
        items.append(IndexItem(
            parsed=entry.parsed,
            stored=StoredObject(key=entry.key, key_id=entry.key_id, size_bytes=entry.size, sha256=entry.sha256),
            instance_uuid=uuid.UUID(match["object"]) if match is not None else None,
            replicated_at=now, verified_at=now if getattr(entry, "verified", True) else None,
            metadata_json=getattr(entry, "metadata_json", ""),
        ))
    with transaction.atomic():
        instances_index_write(clinic=clinic, items=items)
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=F("used_bytes") + sum(e.size for e in decoded))


@transaction.atomic
def instance_index_create(
    *, clinic: Clinic, parsed: Any, object_key: str, key_id: str, sha256: str, size_bytes: int,
    verified: bool = True, metadata_json: str = "",
) -> Instance:
    """Index one recovered instance with the ingest's own index writer, and count it in the usage.

    The object uuid comes from the object key, so the instance keeps the uuid it had before.
    Replication and verification state: the object came from the replica, so it is replicated; it was
    verified when it was decrypted here (``verified``), else the backup verifier checks it.
    """
    now = timezone.now()
    match = _OBJECT_KEY.match(object_key)
    stored = StoredObject(key=object_key, key_id=key_id, size_bytes=size_bytes, sha256=sha256)
    try:
        with transaction.atomic():
            [instance] = instances_index_write(clinic=clinic, items=[IndexItem(
                parsed=parsed, stored=stored,
                instance_uuid=uuid.UUID(match["object"]) if match is not None else None,
                replicated_at=now, verified_at=now if verified else None, metadata_json=metadata_json,
            )]).instances
    except IntegrityError:
        # The same SOP Instance UID under another object (a re-upload that replaced it): keep the first.
        logger.warning("Skipping %s: its SOP Instance UID is already indexed.", object_key)
        return Instance.objects.for_clinic(clinic).get(sop_instance_uid=parsed.sop_instance_uid)
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=F("used_bytes") + size_bytes)
    return instance


def object_repair_schedule(*, clinic: Clinic, key: str) -> bool:
    """Queue ``object_repair`` for a primary object that failed a read (the failover hook calls this).

    At most one repair per object is queued every few minutes, so a popular damaged object read many
    times does not flood the queue. Returns whether a task was queued.
    """
    from django.core.cache import cache

    if not cache.add(f"backup:repair:{key}", 1, timeout=300):
        return False
    current_app.tasks[OBJECT_REPAIR_TASK].delay(clinic_id=clinic.pk, key=key)
    return True

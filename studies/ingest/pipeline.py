"""How an instance is stored, top to bottom: every way in calls :func:`instances_ingest`.

Browser uploads, ZIP members, STOW-RS, C-STORE, upload links, anonymization jobs all hand ingest a batch
of files (often a batch of one) and an :class:`~studies.ingest.origin.Origin`. For a batch:

1. Each file is parsed once (``dicom.parse_instance``: validation and the DICOM JSON header); a file that
   fails is refused alone (InvalidDicom), nothing of it stored.
2. SOP Instance UIDs already stored are looked up in one query. The same data set (File Meta aside: two
   senders write different ones) is *already present*; other content is a conflict: audited, refused,
   the stored instance untouched.
3. Room is checked once: uploads not paused, the primary store not full, the clinic's quota not passed
   (files that do not fit are refused before anything is written).
4. Each file is streamed through encryption into the primary store (durable on return; in sync
   replication mode into both stores, by the writer backup registers in ``hooks``).
5. In one transaction: the quota is reserved for the batch (a conditional UPDATE, so parallel uploads
   can't pass it together) and the index rows are written (``index.instances_index_write``).
6. After commit, the registered hooks queue replication and thumbnails with one message per batch.

If anything fails before the commit, the objects are deleted and neither index row nor quota remains (a
crash leaves at most an orphan object, never indexed nor counted); an instance is acknowledged only when
this returns it as stored or already present.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.db.models import QuerySet

from billing import selectors as billing_selectors
from billing import tasks as billing_tasks
from portal import prepared
from portal.exceptions import PortalError
from studies import admission, dicom
from studies.archive import keys, objects, stores
from studies.archive.errors import StorageFull, StorageUnavailable
from studies.errors import (
    AnnouncedUidMismatch,
    InstanceConflict,
    InvalidDicom,
    QuotaExceeded,
    StudyBeingPurged,
    StudyMismatch,
)
from studies.ingest import hooks
from studies.ingest.index import (
    IndexItem,
    instances_index_write,
    quota_exceeded,
    quota_left,
    quota_release,
    quota_reserve,
    series_conflicts,
    usage_recount,
)
from studies.ingest.lookups import looked_up
from studies.ingest.origin import Origin, OriginKind
from studies.models import Instance, QuarantinedInstance
from tenants.audit import audit_record
from tenants.models import Clinic, User

logger = logging.getLogger(__name__)

# Usage warnings (80% and 95% of the quota) are checked at most this often per clinic, not per file.
USAGE_CHECK_SECONDS = 60
# A stream (one association) with at least this much quota left reuses its last reading for a few seconds
# (studies.ingest.lookups) rather than reading the quota before every image.
QUOTA_ROOM_REUSED = 4 * 1024**3
# Objects of one batch written at once.
WRITE_THREADS = 2


class IngestOutcome(StrEnum):
    STORED = "stored"
    ALREADY_PRESENT = "already_present"


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    instance: Instance


@dataclass
class ItemResult:
    """What became of one file of a batch: a result, or the domain error that refused it."""

    path: str
    result: IngestResult | None = None
    error: PortalError | None = None
    parsed: dicom.ParsedInstance | None = None


@dataclass
class _Pending:
    """A file of the batch on its way in: parsed, then room reserved, then written."""

    item: ItemResult
    parsed: dicom.ParsedInstance
    size: int
    written: hooks.WrittenObject | None = None
    object_uuid: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def stored(self) -> objects.StoredObject:
        """The object this file was written as (only asked for once the write stage has run)."""
        assert self.written is not None, "the file has not been written yet"
        return self.written.stored


def instance_ingest(
    *,
    clinic: Clinic,
    source_path: str,
    source: str = "upload",
    origin: Origin | None = None,
    actor: User | None = None,
    dicom_node: Any = None,
    anonymize_project: Any = None,
) -> IngestResult:
    """Validate, store and index one DICOM file; return whether it was stored or already present.

    ``origin`` says who sent it; ``actor``/``dicom_node`` are the older way to say the same and are
    turned into an origin (a view builds its origin with ``Origin.from_request``). Raises InvalidDicom (nothing stored), InstanceConflict (audited; the
    stored instance untouched), QuotaExceeded, StorageUnavailable / StorageFull (retryable).
    """
    origin = origin or _origin_from(source=source, actor=actor, dicom_node=dicom_node)
    [item] = instances_ingest(clinic=clinic, paths=[source_path], origin=origin, anonymize_project=anonymize_project)
    if item.error is not None:
        raise item.error
    assert item.result is not None
    return item.result


def _origin_from(*, source: str, actor: User | None, dicom_node: Any) -> Origin:
    if dicom_node is not None:
        return Origin.dicom(node=dicom_node)
    if source == "anonymize":
        return Origin.anonymization(user=actor)
    return Origin.system(source=source, user=actor)


def instances_ingest(
    *,
    clinic: Clinic,
    paths: Sequence[str],
    origin: Origin,
    anonymize_project: Any = None,
    study_uid: str | None = None,
    announced_uids: Sequence[str] | None = None,
) -> list[ItemResult]:
    """Ingest a batch of DICOM files; return one result per path, in order (never raises a domain error).

    ``study_uid`` (STOW-RS to one study) refuses files of any other study with StudyMismatch;
    ``announced_uids`` (one per path, a C-STORE's Affected SOP Instance UID) refuses a file whose own SOP
    Instance UID differs with AnnouncedUidMismatch. Both are checked on the received file, before anything
    is stored or anonymized. When the
    clinic, the origin's API token, upload link or DICOM node says "anonymize on ingest" (or
    ``anonymize_project`` is given), only anonymized copies are stored: the originals are never written.
    """
    project = None
    if origin.kind not in (OriginKind.ANONYMIZATION, OriginKind.REBUILD):
        project = anonymize_project or looked_up(
            origin.lookups,
            "anonymize-rule",
            lambda: hooks.anonymizer().rule(
                clinic=clinic, api_token=origin.api_token, dicom_node=origin.dicom_node,
                upload_link=origin.upload_link,
            ),
        )
    announced = list(announced_uids) if announced_uids is not None else [""] * len(paths)
    if project is None:
        return _ingest_batch(clinic=clinic, paths=paths, origin=origin, study_uid=study_uid, announced=announced)
    return _ingest_anonymized(clinic=clinic, paths=paths, origin=origin, project=project, study_uid=study_uid,
                              announced=announced)


def _received_check(parsed: dicom.ParsedInstance, *, study_uid: str | None, announced: str) -> None:
    """Refuse a received file that is not what its sender named: another study, or another instance."""
    if study_uid is not None and parsed.study_instance_uid != study_uid:
        raise StudyMismatch("The instance belongs to another study than the one named in the request.")
    if announced and parsed.sop_instance_uid != announced:
        raise AnnouncedUidMismatch("SOP Instance UID differs from the Affected SOP Instance UID")


def _ingest_anonymized(
    *, clinic: Clinic, paths: Sequence[str], origin: Origin, project: Any, study_uid: str | None,
    announced: Sequence[str],
) -> list[ItemResult]:
    results: list[ItemResult] = []
    for path, announced_uid in zip(paths, announced, strict=True):
        item = ItemResult(path=path)
        anonymized_path = ""
        try:
            # A broken file is refused for what it is, before anonymization could hide why.
            item.parsed = dicom.parse_instance(path)
            _received_check(item.parsed, study_uid=study_uid, announced=announced_uid)
            anonymized_path, anonymized = hooks.anonymizer().anonymize(project=project, source_path=path)
            [done] = _ingest_batch(clinic=clinic, paths=[anonymized_path], origin=origin, study_uid=None,
                                   announced=[""])
            item.result, item.error = done.result, done.error
            if done.result is not None:
                hooks.anonymizer().link(
                    project=project,
                    study=done.result.instance.series.study,
                    needs_review=anonymized.report.needs_review,
                )
        except PortalError as exc:
            item.error = exc
        finally:
            if anonymized_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(anonymized_path)
        results.append(item)
    return results


def _ingest_batch(
    *, clinic: Clinic, paths: Sequence[str], origin: Origin, study_uid: str | None, announced: Sequence[str]
) -> list[ItemResult]:
    items = [ItemResult(path=path) for path in paths]
    pending: list[_Pending] = []
    for item, announced_uid in zip(items, announced, strict=True):
        try:
            item.parsed = dicom.parse_instance(item.path)
            _received_check(item.parsed, study_uid=study_uid, announced=announced_uid)
            pending.append(_Pending(item=item, parsed=item.parsed, size=os.path.getsize(item.path)))
        except PortalError as exc:
            item.error = exc
    # A SOP Instance UID twice in one batch: the first goes in now, the others once it is committed.
    first: dict[str, _Pending] = {}
    later: list[_Pending] = []
    for entry in pending:
        if entry.parsed.sop_instance_uid in first:
            later.append(entry)
        else:
            first[entry.parsed.sop_instance_uid] = entry
    pending = list(first.values())
    # The checks on what may be filed where, in order; each answers the files it refuses and returns the
    # others (add new ones here: nothing has been written yet).
    pending = _drop_existing(clinic=clinic, pending=pending, origin=origin)
    if origin.upload_link is None:
        # An outside sender's file naming a stored series is held by admission instead, answered as new.
        pending = _drop_series_conflicts(clinic=clinic, pending=pending, origin=origin)
    if pending:
        _store(clinic=clinic, pending=pending, origin=origin)
    if later:
        # Their UIDs were checked above; what is left to decide is whether the first one's copy is theirs.
        again = _ingest_batch(clinic=clinic, paths=[e.item.path for e in later], origin=origin, study_uid=study_uid,
                              announced=[""] * len(later))
        for entry, done in zip(later, again, strict=True):
            entry.item.result, entry.item.error = done.result, done.error
    return items


def _drop_existing(*, clinic: Clinic, pending: list[_Pending], origin: Origin) -> list[_Pending]:
    """Answer the files whose SOP Instance UID is already stored; return the others."""
    if not pending:
        return pending
    uids = [e.parsed.sop_instance_uid for e in pending]
    # Most files are new: a bare lookup of the UIDs first (compiled once per list size: a one-image
    # batch spent more CPU building it than the database took), the stored rows only for those that exist.
    found_uids = [row["sop_instance_uid"] for row in prepared.rows(
        "ingest.stored_uids", _stored_uid_rows, clinic_id=clinic.pk, **prepared.in_values("uid", uids)
    )]
    existing = {
        instance.sop_instance_uid: instance
        for instance in Instance.objects.for_clinic(clinic)
        .select_related("series__study")
        .defer("metadata")
        .filter(sop_instance_uid__in=found_uids)
    } if found_uids else {}
    new = []
    for entry in pending:
        found = existing.get(entry.parsed.sop_instance_uid)
        if found is None:
            new.append(entry)
            continue
        if origin.upload_link is not None and not _same_content(
            clinic=clinic, existing=found, source_path=entry.item.path
        ):
            # An outside sender's other content under a stored UID is held (studies.admission), not refused:
            # a link must not learn which UIDs exist.
            new.append(entry)
            continue
        try:
            entry.item.result = _duplicate(clinic=clinic, existing=found, source_path=entry.item.path, origin=origin)
        except PortalError as exc:
            entry.item.error = exc
    return new


def _stored_uid_rows(*, clinic_id: int, **uids: str) -> QuerySet:
    return Instance.objects.filter(clinic_id=clinic_id, sop_instance_uid__in=list(uids.values())).values(
        "sop_instance_uid"
    )


def _drop_series_conflicts(*, clinic: Clinic, pending: list[_Pending], origin: Origin) -> list[_Pending]:
    """Refuse the files whose series the clinic (or an earlier file of the batch) files under another study."""
    accepted = series_conflicts(clinic=clinic, parsed=[e.parsed for e in pending], lookups=origin.lookups)
    keep: list[_Pending] = []
    for entry in pending:
        study = accepted.get(entry.parsed.series_instance_uid)
        if study is not None and study != entry.parsed.study_instance_uid:
            entry.item.error = InvalidDicom(
                "The file's Series Instance UID already belongs to another study in this clinic."
            )
            continue
        keep.append(entry)
    return keep


def _store(*, clinic: Clinic, pending: list[_Pending], origin: Origin) -> None:
    """Reserve room, write the objects and index them in one transaction; fill in each item's answer."""
    try:
        _room_check(clinic=clinic, size=sum(e.size for e in pending), origin=origin)
    except PortalError as exc:
        for entry in pending:
            entry.item.error = exc
        return
    writable = _quota_precheck(clinic=clinic, pending=pending, origin=origin)
    _write_objects(clinic=clinic, pending=writable)
    written = [e for e in writable if e.written is not None]
    if not written:
        return
    try:
        # Durable before anything is indexed: one folder fsync for the batch rather than one per object.
        objects.objects_folders_sync(keys=[e.stored.key for e in written if e.written is not None and e.written.folder_pending])
    except Exception as exc:  # noqa: BLE001 - no object of the batch is durable: none is acknowledged
        error = _as_portal_error(exc)
        for entry in written:
            _undo(clinic=clinic, entry=entry)
            entry.item.error = error
        return
    try:
        committed = _index(clinic=clinic, pending=written, origin=origin)
    except (IntegrityError, QuotaExceeded, InvalidDicom):
        # Another upload indexed one of these SOP Instance UIDs, or took the space left, or filed one of
        # these series under another study, meanwhile: go through them one by one so each gets its own answer.
        committed = []
        for entry in written:
            committed.extend(_index_alone(clinic=clinic, entry=entry, origin=origin))
    except BaseException as exc:
        for entry in written:
            _undo(clinic=clinic, entry=entry)
        if not isinstance(exc, Exception):
            raise
        error = _as_portal_error(exc)
        for entry in written:
            entry.item.error = error
        return
    if committed:
        instances = [e.item.result.instance for e in committed if e.item.result is not None]
        for hook in hooks.after_commit_hooks():
            # Registered after our transaction closed: a failing enqueue must never undo a committed ingest
            # (robust callbacks only log), and the replication sweep catches anything lost here.
            transaction.on_commit(functools.partial(hook, clinic, instances), robust=True)
        _usage_check_soon(clinic=clinic)
        logger.info("Stored %d instances of clinic %s (%s)", len(instances), clinic.pk, origin.source)


def _room_check(*, clinic: Clinic, size: int, origin: Origin) -> None:
    paused = looked_up(origin.lookups, "upload-block", lambda: billing_selectors.upload_block_reason(clinic=clinic))
    if paused:
        raise QuotaExceeded(paused)
    free = stores.get_store("primary").free_bytes()
    if free is not None and free - size < settings.PRIMARY_STORE_MIN_FREE_BYTES:
        logger.error("Primary store nearly full (%d bytes free): refusing new objects for now", free)
        raise StorageFull(
            "The archive's storage is full for the moment; nothing was stored. Keep your copy and send it again later."
        )


def _quota_precheck(*, clinic: Clinic, pending: list[_Pending], origin: Origin) -> list[_Pending]:
    """Refuse, before anything is written, the files the quota has no room for; return the others.

    Only a check: the reservation is made in the index transaction (``_index``), so a crash or a failed
    write between here and the commit leaves no quota counted for anything unacknowledged. A stream far
    from its quota reuses what it read a moment ago (the conditional reservation still decides); near the
    limit, or when a batch does not fit, the quota is read afresh.
    """
    size = sum(entry.size for entry in pending)
    left, quota = looked_up(
        origin.lookups, "quota-left", lambda: quota_left(clinic=clinic),
        keep=lambda answer: answer[0] >= QUOTA_ROOM_REUSED,
    )
    if size > left and origin.lookups is not None:
        left, quota = quota_left(clinic=clinic)
    if size > left and usage_recount(clinic=clinic, reason="upload refused"):
        # Never refuse because of usage no row accounts for (left committed by something else; see
        # usage_recount): recount first, audited, and check again against the corrected usage.
        left, quota = quota_left(clinic=clinic)
    fitting = []
    for entry in pending:
        if entry.size <= left:
            left -= entry.size
            fitting.append(entry)
        else:
            entry.item.error = quota_exceeded(size_bytes=entry.size, bytes_left=left, quota_bytes=quota)
    return fitting


def _write_one(clinic: Clinic, entry: _Pending) -> None:
    try:
        with open(entry.item.path, "rb") as fileobj:
            entry.written = hooks.object_write(clinic=clinic, source=fileobj, object_uuid=entry.object_uuid)
    except BaseException as exc:
        if not isinstance(exc, Exception):
            raise
        entry.item.error = _as_portal_error(exc)


def _write_objects(*, clinic: Clinic, pending: list[_Pending]) -> None:
    """Write the batch's objects, two at a time: encryption and fsync release the GIL, so they overlap."""
    if len(pending) == 1 or connection.in_atomic_block:
        # Inside a caller's transaction a helper thread could not see a clinic key created in it.
        for entry in pending:
            _write_one(clinic, entry)
        return
    keys.clinic_key_get(clinic)  # loaded (or created) here, so the helper threads find it cached
    with ThreadPoolExecutor(max_workers=WRITE_THREADS, thread_name_prefix="ingest-write") as pool:
        list(pool.map(functools.partial(_write_in_thread, clinic), pending))


def _write_in_thread(clinic: Clinic, entry: _Pending) -> None:
    try:
        _write_one(clinic, entry)
    finally:
        # Should the key cache have expired, the thread used its own connection: never leave it open.
        connection.close()


def _index(*, clinic: Clinic, pending: list[_Pending], origin: Origin) -> list[_Pending]:
    held: list[tuple[_Pending, QuarantinedInstance]] = []
    refused: list[_Pending] = []
    with transaction.atomic():
        # The reservation commits with the rows or not at all; it also locks the clinic's row, so the
        # clinic's batches take their locks (clinic, then studies by key) in one order.
        quota_reserve(clinic=clinic, size_bytes=sum(e.size for e in pending))
        admitted = []
        locked: dict[str, Any] = {}  # one study lookup (and lock) per study of the batch
        for entry in pending:
            # Trash, patient identity and outside-sender rules (studies.admission): a held file keeps its
            # object, in quarantine and in the quota, but gets no index row.
            try:
                quarantined = admission.instance_admit_or_hold(
                    clinic=clinic, parsed=entry.parsed, stored=entry.stored, source=origin.source,
                    actor=origin.user, upload_link=origin.upload_link, locked=locked,
                )
            except StudyBeingPurged as exc:
                entry.item.error = exc
                refused.append(entry)
                continue
            if quarantined is None:
                admitted.append(entry)
            else:
                held.append((entry, quarantined))
        # Refused here, or held again with the copy of an earlier send: their room goes back.
        released = sum(e.size for e in refused) + sum(
            e.size for e, q in held if q.object_key != e.stored.key
        )
        quota_release(clinic=clinic, size_bytes=released)
        pending = admitted
        written = instances_index_write(clinic=clinic, items=[_index_item(e) for e in pending], locked_studies=locked)
        if written.instances:
            for hook in hooks.indexed_hooks():
                hook(clinic, written.instances, origin)
        for study in written.created_studies:
            first = next(i for i in written.instances if i.series.study_id == study.pk)
            _audit(
                clinic=clinic,
                origin=origin,
                action="study.stored",
                object_type="study",
                object_id=str(study.uuid),
                details={"source": origin.source, "first_instance": str(first.uuid)},
            )
    for entry, instance in zip(pending, written.instances, strict=True):
        entry.item.result = IngestResult(IngestOutcome.STORED, instance)
    for entry in refused:
        _undo(clinic=clinic, entry=entry)
    for entry, quarantined in held:
        if quarantined.object_key != entry.stored.key:
            _undo(clinic=clinic, entry=entry)  # the same file was already held
        entry.item.error = admission.held_error(held=quarantined)
    return pending


def _index_alone(*, clinic: Clinic, entry: _Pending, origin: Origin) -> list[_Pending]:
    try:
        return _index(clinic=clinic, pending=[entry], origin=origin)
    except IntegrityError:
        _undo(clinic=clinic, entry=entry)
        existing = (
            Instance.objects.for_clinic(clinic)
            .select_related("series__study")
            .filter(sop_instance_uid=entry.parsed.sop_instance_uid)
            .first()
        )
        if existing is None:
            entry.item.error = StorageUnavailable("The index refused the instance; send it again.")
            return []
        try:
            entry.item.result = _duplicate(clinic=clinic, existing=existing, source_path=entry.item.path, origin=origin)
        except PortalError as exc:
            entry.item.error = exc
        return []
    except Exception as exc:  # noqa: BLE001 - this one file failed; the error is its answer
        _undo(clinic=clinic, entry=entry)
        entry.item.error = _as_portal_error(exc)
        return []


def _index_item(entry: _Pending) -> IndexItem:
    assert entry.written is not None
    return IndexItem(
        parsed=entry.parsed,
        stored=entry.stored,
        instance_uuid=entry.object_uuid,
        replicated_at=entry.written.replicated_at,
    )


def _as_portal_error(exc: Exception) -> PortalError:
    """Map a failure of the store path to the answer a sender can act on."""
    if isinstance(exc, PortalError):
        return exc
    if isinstance(exc, OSError) and exc.errno in stores.NO_SPACE_ERRNOS:
        return StorageFull("The archive's storage is full for the moment; nothing was stored. Retry later.")
    if isinstance(exc, OperationalError) and "full" in str(exc).lower():
        return StorageFull("The archive's index is out of space for the moment; nothing was stored. Retry later.")
    if isinstance(exc, (DatabaseError, OSError)):
        logger.exception("Ingest failed for a reason the sender cannot fix; answered as retryable")
        return StorageUnavailable("The archive could not store the instance just now; nothing was kept. Retry.")
    raise exc


def _undo(*, clinic: Clinic, entry: _Pending) -> None:
    """Remove what a failed ingest left behind: the object, then the quota reservation."""
    if entry.written is not None:
        try:
            objects.object_delete(clinic=clinic, key=entry.written.stored.key)
        except Exception:  # noqa: BLE001 - the original error matters more; an orphan object holds no index row
            logger.exception("Could not delete orphan object %s after a failed ingest", entry.written.stored.key)
        entry.written = None


def _duplicate(*, clinic: Clinic, existing: Instance, source_path: str, origin: Origin) -> IngestResult:
    if _same_content(clinic=clinic, existing=existing, source_path=source_path):
        # Answered "stored": its study must not stay in the trash, nor be under the purge's hands.
        admission.duplicate_admit(clinic=clinic, study=existing.series.study, upload_link=origin.upload_link,
                                  actor=origin.user)
        return IngestResult(IngestOutcome.ALREADY_PRESENT, existing)
    _audit(
        clinic=clinic,
        origin=origin,
        action="instance.conflict",
        object_type="instance",
        object_id=str(existing.uuid),
        result="refused",
    )
    logger.warning("Refused conflicting content for instance %s of clinic %s", existing.uuid, clinic.pk)
    raise InstanceConflict(
        "An instance with the same SOP Instance UID is already stored with different content; the stored one was kept.",
        instance=str(existing.uuid),
    )


def _same_content(*, clinic: Clinic, existing: Instance, source_path: str) -> bool:
    """Whether the file holds the stored instance's data set (File Meta aside)."""
    if _sha256(source_path) == existing.sha256:
        return True
    # Only when the whole files differ: decrypt the stored copy and compare the data sets alone.
    try:
        with (
            open(source_path, "rb") as arriving,
            objects.object_open_seekable(clinic=clinic, key=existing.object_key) as stored,
        ):
            return dicom.data_set_digest(arriving) == dicom.data_set_digest(stored)
    except InvalidDicom:
        return False


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fileobj:
        while chunk := fileobj.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _audit(
    *,
    clinic: Clinic,
    origin: Origin,
    action: str,
    object_type: str,
    object_id: str,
    result: str = "success",
    details: dict[str, Any] | None = None,
) -> None:
    # Who acts is the origin's actor; the store path has always recorded its person, label and address
    # but not the browser, and keeps its entries as they were.
    audit_record(
        clinic=clinic,
        action=action,
        actor=origin.actor.user,
        actor_label=origin.actor.audit_label(),
        object_type=object_type,
        object_id=object_id,
        result=result,
        details=details,
        ip_address=origin.actor.ip_address,
    )


def _usage_check_soon(*, clinic: Clinic) -> None:
    if not cache.add(f"usage-check:{clinic.pk}", 1, timeout=USAGE_CHECK_SECONDS):
        return
    transaction.on_commit(lambda: billing_tasks.usage_warnings_check.delay(clinic_id=clinic.pk), robust=True)

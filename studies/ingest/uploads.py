"""Uploads: one file or a ZIP archive from the upload page, the REST upload API or an upload link.

``upload_receive`` takes one uploaded file, with its ``Origin``: a DICOM file is ingested at once, a ZIP
archive is staged and unpacked by a worker; the answer (``UploadAnswer``) is the same for every door.

ZIP archives: stage the archive encrypted, then unpack it safely in a worker.

The web process only streams the archive into the primary store (encrypted like everything else, so
any worker can read it) and records an ``UploadBatch``. ``studies.tasks.upload_zip_extract`` then
unpacks it member by member, each through ``instance_ingest``, writing one ``UploadItem`` per member.

Safety: member names are never used as file-system paths (each member is copied into a temporary file
we name), so path traversal can't happen; names that try it are refused and reported. Zip bombs are
stopped by limits on member count, total and per-member uncompressed size and compression ratio,
counted on the bytes actually inflated rather than on what the archive's directory claims.

Uploads belong to ingest, below anonymize and backup: the anonymization project model comes from the
app's ``studies.models``, and the staged archive reaches the replica through ``ingest.hooks``.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
import stat
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from http import HTTPStatus
from typing import Any, BinaryIO, Protocol
from uuid import UUID

from celery import current_app
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing import selectors as billing_selectors
from portal.exceptions import PortalError
from studies import ingest
from studies.archive import objects
from studies.archive.errors import ArchiveError, StorageFull, StorageUnavailable
from studies.errors import (
    DicomDirectory,
    InstanceConflict,
    InstanceHeld,
    InvalidDicom,
    NotDicom,
    QuotaExceeded,
    StudyBeingPurged,
)
from studies.ingest import hooks as ingest_hooks
from studies.models import AnonymizationProject, Instance, Study, UploadBatch, UploadItem
from tenants.audit import audit_record
from tenants.models import Clinic, User
from tenants.roles import Action

logger = logging.getLogger(__name__)

Outcome = UploadItem.Outcome
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_COPY_CHUNK = 1024 * 1024
# The tasks are sent by name: their modules import this one (ingest sits below the tasks hub and backup).
ZIP_EXTRACT_TASK = "studies.tasks.upload_zip_extract"
STAGING_REPLICATE_TASK = "studies.tasks.upload_staging_replicate"
REPLICA_PURGE_TASK = "studies.backup.tasks.replica_purge"


def _task(name: str) -> Any:
    """The registered task of that name (StudiesConfig.ready loads the task modules in every process)."""
    return current_app.tasks[name]


class ArchiveRejected(PortalError):
    """The whole archive is refused (not a ZIP, or over a safety limit)."""

    code = "archive_rejected"


@dataclass(frozen=True)
class ZipLimits:
    max_members: int
    max_total_bytes: int
    max_member_bytes: int
    max_ratio: int

    @classmethod
    def from_settings(cls) -> ZipLimits:
        return cls(
            max_members=settings.UPLOAD_ZIP_MAX_MEMBERS,
            max_total_bytes=settings.UPLOAD_ZIP_MAX_TOTAL_BYTES,
            max_member_bytes=settings.UPLOAD_ZIP_MAX_MEMBER_BYTES,
            max_ratio=settings.UPLOAD_ZIP_MAX_RATIO,
        )


def is_zip_file(path: str) -> bool:
    """Say whether the file starts like a ZIP archive (content, not name, decides)."""
    with open(path, "rb") as fileobj:
        return fileobj.read(4) in ZIP_MAGIC


def upload_zip_stage(
    *, clinic: Clinic, source: BinaryIO, name: str, size: int, created_by: User | None,
    anonymize_project: Any = None, upload_link: Any = None,
) -> UploadBatch:
    """Store an uploaded archive encrypted in the primary store and record its batch (queued).

    The caller queues ``tasks.upload_zip_extract`` after commit; the staged archive is copied to the
    replica after commit too (and swept, like instances). Raises QuotaExceeded at the door, before
    anything is stored, when uploads are paused or the archive alone would pass the quota; and
    StorageUnavailable.
    """
    upload_zip_admit(clinic=clinic, size=size)
    stored = objects.object_put(clinic=clinic, source=source, object_uuid=uuid.uuid4())
    batch = UploadBatch.objects.create(
        clinic=clinic,
        created_by=created_by,
        # The name is the sender's text: PostgreSQL refuses NUL bytes in it (a server error, found by fuzzing).
        archive_name=posixpath.basename(name.replace("\\", "/").replace("\x00", ""))[:255],
        archive_size=size,
        staging_key=stored.key,
        anonymize_project=anonymize_project,
        upload_link=upload_link,
    )
    transaction.on_commit(
        partial(_task(STAGING_REPLICATE_TASK).delay, clinic_id=clinic.pk, batch_id=batch.pk), robust=True
    )
    return batch


def upload_zip_admit(*, clinic: Clinic, size: int) -> None:
    """Refuse an archive at the door, with the single-file message, when it can't be stored.

    Its members need at least the archive's own size once unpacked, so a quota with less than that left
    (or paused uploads) refuses it now, instead of staging it to reject every member later. Each member
    is still checked and reserved one by one as it is ingested.
    """
    paused = billing_selectors.upload_block_reason(clinic=clinic)
    if paused:
        raise QuotaExceeded(paused)
    row = Clinic.objects.filter(pk=clinic.pk).values("quota_bytes", "used_bytes").get()
    left = max(row["quota_bytes"] - row["used_bytes"], 0)
    if size > left and ingest.usage_recount(clinic=clinic, reason="upload refused"):
        # Usage no row accounts for never refuses an archive: recounted (audited), then checked again.
        row = Clinic.objects.filter(pk=clinic.pk).values("quota_bytes", "used_bytes").get()
        left = max(row["quota_bytes"] - row["used_bytes"], 0)
    if size > left:
        raise QuotaExceeded(
            f"Not enough storage left: this archive needs at least {ingest.format_bytes(size)} but only "
            f"{ingest.format_bytes(left)} of the clinic's {ingest.format_bytes(row['quota_bytes'])} is free. "
            "Free space or choose a larger plan.",
            bytes_left=left,
            bytes_needed=size,
        )


def upload_staging_replicate(*, batch: UploadBatch) -> bool:
    """Copy a staged archive, still encrypted, to the replica; False when unpacked already or copied."""
    if not batch.staging_key or batch.staging_replicated_at is not None:
        return False
    ingest_hooks.replica_copy(key=batch.staging_key)
    return bool(
        UploadBatch.objects.for_clinic(batch.clinic_id)
        .filter(pk=batch.pk, staging_key=batch.staging_key, staging_replicated_at=None)
        .update(staging_replicated_at=timezone.now())
    )


def upload_batches_stale(*, older_than: timedelta) -> list[tuple[int, int]]:
    """Claim queued or unpacking archives nobody touched for ``older_than``; return (clinic_id, batch_id).

    A lost queue message leaves a batch queued, a killed worker leaves it running: both are handed out
    again. The claim moves ``heartbeat_at`` to now, so a batch is re-queued at most once per period
    even while its message waits behind other work.
    """
    cutoff = timezone.now() - older_than
    # Cross-clinic maintenance query: the intake sweep covers every clinic.
    stale = UploadBatch.objects.filter(
        status__in=[UploadBatch.Status.QUEUED, UploadBatch.Status.RUNNING]
    ).filter(Q(heartbeat_at__lte=cutoff) | Q(heartbeat_at__isnull=True, created_at__lte=cutoff))
    claimed = []
    for batch_id, clinic_id, heartbeat_at in stale.values_list("pk", "clinic_id", "heartbeat_at")[:1000]:
        if UploadBatch.objects.filter(pk=batch_id, heartbeat_at=heartbeat_at).update(heartbeat_at=timezone.now()):
            claimed.append((clinic_id, batch_id))
    return claimed


def upload_staging_pending(*, older_than: timedelta) -> list[tuple[int, int]]:
    """Staged archives not yet on the replica after ``older_than``: (clinic_id, batch_id)."""
    # Cross-clinic maintenance query: the intake sweep covers every clinic.
    return list(
        UploadBatch.objects.filter(staging_replicated_at__isnull=True, created_at__lte=timezone.now() - older_than)
        .exclude(staging_key="").values_list("clinic_id", "pk")[:1000]
    )


def upload_zip_extract(*, batch: UploadBatch, limits: ZipLimits | None = None) -> UploadBatch:
    """Unpack a staged archive and ingest every member; safe to run again after a crash or retry.

    Members that already have a result are not ingested again. Raises StorageUnavailable (the task
    retries); any other failure of the whole archive marks the batch failed with a message.
    """
    limits = limits or ZipLimits.from_settings()
    claimed = (
        UploadBatch.objects.for_clinic(batch.clinic_id)
        .filter(pk=batch.pk, status__in=[UploadBatch.Status.QUEUED, UploadBatch.Status.RUNNING])
        .update(status=UploadBatch.Status.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now())
    )
    if not claimed:
        return batch  # finished by an earlier delivery
    clinic = batch.clinic
    try:
        with tempfile.TemporaryFile(prefix="upload-zip-") as local:
            # zipfile needs to seek; the staged object is a decrypting stream, so copy it locally first.
            with closing(objects.object_open(clinic=clinic, key=batch.staging_key)) as staged:
                shutil.copyfileobj(staged, local, _COPY_CHUNK)
            local.seek(0)
            _extract(batch=batch, clinic=clinic, fileobj=local, limits=limits)
    except StorageUnavailable:
        raise
    except (ArchiveRejected, ArchiveError) as exc:
        _finish(batch, UploadBatch.Status.FAILED, exc.message)
        return batch
    except zipfile.BadZipFile:
        _finish(batch, UploadBatch.Status.FAILED, "The file is not a readable ZIP archive.")
        return batch
    _finish(batch, UploadBatch.Status.DONE, "")
    return batch


def _finish(batch: UploadBatch, status: str, message: str) -> None:
    if batch.staging_key:
        try:
            objects.object_delete(clinic=batch.clinic, key=batch.staging_key)
        except ArchiveError:
            logger.warning("Could not delete the staged archive of upload batch %s", batch.uuid)
        # Its replica copy goes too, with the replica's own credentials (replica-admin queue).
        transaction.on_commit(
            partial(_task(REPLICA_PURGE_TASK).delay, clinic_id=batch.clinic_id, key=batch.staging_key), robust=True
        )
    batch.status = status
    batch.message = message[:500]
    batch.finished_at = timezone.now()
    batch.staging_key = ""
    batch.save(update_fields=["status", "message", "finished_at", "staging_key"])
    counts = upload_batch_counts(batch=batch)
    audit_record(
        clinic=batch.clinic,
        action="upload.archive_unpacked" if status == UploadBatch.Status.DONE else "upload.archive_failed",
        actor=batch.created_by,
        object_type="upload_batch",
        object_id=str(batch.uuid),
        result="success" if status == UploadBatch.Status.DONE else "failure",
        details=counts,
    )


def upload_batch_counts(*, batch: UploadBatch) -> dict[str, int]:
    """Return how many members ended in each outcome."""
    counts = {outcome.value: 0 for outcome in Outcome}
    for outcome in UploadItem.objects.for_clinic(batch.clinic_id).filter(batch=batch).values_list("outcome", flat=True):
        counts[outcome] += 1
    return counts


def _safe_member_name(name: str) -> str | None:
    """Return the member's path for display, or None when it tries to leave the archive's root."""
    cleaned = name.replace("\\", "/")
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":") or "\x00" in cleaned:
        return None
    parts = [part for part in cleaned.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        return None
    return "/".join(parts)


def _extract(*, batch: UploadBatch, clinic: Clinic, fileobj: BinaryIO, limits: ZipLimits) -> None:
    with zipfile.ZipFile(fileobj) as archive:
        members = [info for info in archive.infolist() if not info.is_dir()]
        if len(members) > limits.max_members:
            raise ArchiveRejected(
                f"The archive holds {len(members)} files; at most {limits.max_members} are accepted per archive."
            )
        done = set(UploadItem.objects.for_clinic(clinic).filter(batch=batch).values_list("name", flat=True))
        inflated_total = 0
        for info in members:
            label = (_safe_member_name(info.filename) or info.filename)[:1024]
            if label in done:
                continue
            outcome, reason, instance, inflated = _member_ingest(
                archive=archive,
                info=info,
                clinic=clinic,
                batch=batch,
                limits=limits,
                budget=limits.max_total_bytes - inflated_total,
            )
            inflated_total += inflated
            try:
                UploadItem.objects.create(
                    clinic=clinic,
                    batch=batch,
                    name=label,
                    size_bytes=info.file_size,
                    outcome=outcome,
                    reason=reason[:500],
                    instance=instance,
                )
            except IntegrityError:
                pass  # two members with the same name: the first result stands
            # Alive: the intake sweep leaves this batch to us (a killed worker stops touching it).
            UploadBatch.objects.for_clinic(clinic).filter(pk=batch.pk).update(heartbeat_at=timezone.now())
            if inflated_total >= limits.max_total_bytes:
                raise ArchiveRejected(
                    "The archive unpacks to more than the allowed total size; the rest of it was not read."
                )


def _member_ingest(
    *,
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    clinic: Clinic,
    batch: UploadBatch,
    limits: ZipLimits,
    budget: int,
) -> tuple[str, str, Instance | None, int]:
    """Ingest one member; return (outcome, reason, instance or None, bytes inflated)."""
    if _safe_member_name(info.filename) is None:
        return (
            Outcome.REJECTED,
            "Unsafe path inside the archive (absolute or leading outside it); not unpacked.",
            None,
            0,
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return Outcome.SKIPPED, "Symbolic link: not unpacked.", None, 0
    if info.flag_bits & 0x1:
        return Outcome.REJECTED, "Encrypted member: can't be read without its password.", None, 0
    if info.file_size > limits.max_member_bytes:
        return Outcome.REJECTED, "Too large to unpack from an archive; upload this file on its own.", None, 0
    with tempfile.NamedTemporaryFile(prefix="upload-member-", suffix=".dcm") as member:
        inflated = 0
        limit = min(limits.max_member_bytes, budget)
        try:
            with archive.open(info) as source:
                while chunk := source.read(_COPY_CHUNK):
                    inflated += len(chunk)
                    # Counted on real bytes: a forged directory entry can't hide a bomb.
                    if inflated > limit:
                        if inflated > budget:
                            raise ArchiveRejected(
                                "The archive unpacks to more than the allowed total size; the rest was not read."
                            )
                        return Outcome.REJECTED, "Too large to unpack from an archive.", None, inflated
                    if inflated > 1024 * 1024 and inflated > limits.max_ratio * max(info.compress_size, 1):
                        return (
                            Outcome.REJECTED,
                            "Compressed suspiciously well (a possible zip bomb); not unpacked.",
                            None,
                            inflated,
                        )
                    member.write(chunk)
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
            return Outcome.REJECTED, f"Can't be unpacked: {exc.__class__.__name__}.", None, inflated
        member.flush()
        try:
            result = ingest.instance_ingest(
                clinic=clinic, source_path=member.name, anonymize_project=batch.anonymize_project,
                origin=ingest.Origin.upload_batch(user=batch.created_by, upload_link=batch.upload_link),
            )
        except (DicomDirectory, NotDicom) as exc:
            return Outcome.SKIPPED, exc.message, None, inflated
        except (InvalidDicom, InstanceConflict, QuotaExceeded) as exc:
            return Outcome.REJECTED, exc.message, None, inflated
    outcome = Outcome.STORED if result.outcome == ingest.IngestOutcome.STORED else Outcome.ALREADY_PRESENT
    return outcome, "", result.instance, inflated


# --- One uploaded file (the upload page, the REST upload API, upload links) ------------------------

# The most results one status answer lists; the counts always cover the whole batch.
BATCH_ITEMS_SHOWN = 5000


@contextmanager
def _on_disk(upload: UploadedFile) -> Iterator[str]:
    """Yield a path to the uploaded bytes: Django already spooled big files to disk; small ones we write."""
    path = getattr(upload, "temporary_file_path", None)
    if path is not None:
        yield path()
        return
    with tempfile.NamedTemporaryFile(prefix="upload-", suffix=".dcm") as tmp:
        upload.seek(0)
        shutil.copyfileobj(upload, tmp, 1024 * 1024)
        tmp.flush()
        yield tmp.name


@dataclass(frozen=True)
class UploadAnswer:
    """What became of one uploaded file, shared by the upload page's endpoint and the REST API."""

    outcome: str
    reason: str = ""
    status: int = HTTPStatus.OK
    # The study the instance is in, when it was stored or already present.
    study: Study | None = None
    # The archive's batch, when a ZIP archive was queued for unpacking.
    batch: UploadBatch | None = None
    # Kept in quarantine for review rather than filed (studies.admission); outcome "rejected" for the clinic.
    held: bool = False


class Sender(Protocol):
    """Who sends an upload: a Membership, an ApiToken or an upload link's stand-in."""

    def can(self, action: str) -> bool: ...


PROJECT_CHOICE_REFUSED = (
    "Your role cannot choose an anonymization project; nothing was stored. Send the files without one: the "
    "clinic's anonymize-on-ingest rules still apply. Owners, admins and clinicians may choose a project."
)


def upload_receive(
    *, clinic: Clinic, upload: UploadedFile | None, origin: ingest.Origin, sender: Sender, name: str = "",
    anonymize_project: str = "",
) -> UploadAnswer:
    """Ingest one uploaded file, or stage a ZIP archive for unpacking; never raises a domain error.

    Shared by the upload page, the REST upload API and upload links; the caller has checked the upload
    right. ``origin`` says who sent it (user, API token or upload link, and the address, for the audit);
    ``anonymize_project`` is the uuid of the clinic's anonymization project the sender chose, if any:
    only a ``sender`` with the anonymize right may choose one (answered 403 otherwise).
    """
    if upload is None:
        return UploadAnswer(
            "rejected", "No file was sent (expected a multipart field named 'file').", HTTPStatus.BAD_REQUEST
        )
    name = name or upload.name or ""
    project = None
    chosen = anonymize_project.strip()
    # A chosen project overrides the ingest rules (the upload link's project, the token's or the clinic's
    # rule) and may keep UIDs or dates: an anonymize decision, not an uploader's or an outside sender's.
    if chosen and not sender.can(Action.SHARE):
        return UploadAnswer("rejected", PROJECT_CHOICE_REFUSED, HTTPStatus.FORBIDDEN)
    if chosen:
        project = _anonymize_project(clinic=clinic, value=chosen)
        if project is None:
            return UploadAnswer("rejected", "The anonymization project chosen does not exist in this clinic.",
                                HTTPStatus.UNPROCESSABLE_ENTITY)
    try:
        with _on_disk(upload) as path:
            if is_zip_file(path):
                batch = _stage_zip(clinic=clinic, origin=origin, path=path, name=name, size=upload.size or 0,
                                   anonymize_project=project)
                return UploadAnswer("queued", "The archive is being unpacked.", HTTPStatus.ACCEPTED, batch=batch)
            result = ingest.instance_ingest(clinic=clinic, source_path=path, anonymize_project=project, origin=origin)
    except (DicomDirectory, NotDicom) as exc:
        # A CD copy's readme or viewer files are not mistakes: skipped, as inside a ZIP archive.
        return UploadAnswer("skipped", exc.message)
    except InstanceHeld as exc:
        return UploadAnswer("rejected", exc.message, HTTPStatus.UNPROCESSABLE_ENTITY, held=True)
    except StudyBeingPurged as exc:
        return UploadAnswer("error", exc.message, HTTPStatus.SERVICE_UNAVAILABLE)
    except (InvalidDicom, InstanceConflict, QuotaExceeded) as exc:
        return UploadAnswer(
            "rejected",
            exc.message,
            exc.status if exc.status != HTTPStatus.BAD_REQUEST else HTTPStatus.UNPROCESSABLE_ENTITY,
        )
    except StorageFull:
        return UploadAnswer("error", "The archive's storage is full for the moment; nothing was stored. Keep the "
                            "file and send it again later.", HTTPStatus.SERVICE_UNAVAILABLE)
    except StorageUnavailable:
        return UploadAnswer(
            "error", "Storage is unavailable for a moment; the file will be sent again.", HTTPStatus.SERVICE_UNAVAILABLE
        )
    except PortalError as exc:
        return UploadAnswer("error", exc.message, exc.status)
    study = result.instance.series.study
    reason = ""
    if result.outcome == ingest.IngestOutcome.ALREADY_PRESENT and study.deleted_at is not None:
        reason = "Its study is in the trash: restore the study to see it again."
    status = HTTPStatus.CREATED if result.outcome == ingest.IngestOutcome.STORED else HTTPStatus.OK
    return UploadAnswer(result.outcome.value, reason, status, study=study)


def _anonymize_project(*, clinic: Clinic, value: str) -> AnonymizationProject | None:
    """The clinic's anonymization project named by its uuid in the upload, or None."""
    try:
        return AnonymizationProject.objects.for_clinic(clinic).filter(uuid=UUID(value)).first()
    except ValueError:
        return None


def _stage_zip(
    *, clinic: Clinic, origin: ingest.Origin, path: str, name: str, size: int,
    anonymize_project: AnonymizationProject | None,
) -> UploadBatch:
    # No transaction around the staging write: a long upload to the store must not hold one open.
    with open(path, "rb") as source:
        batch = upload_zip_stage(
            clinic=clinic, source=source, name=name, size=size, created_by=origin.user,
            anonymize_project=anonymize_project, upload_link=origin.upload_link,
        )
    transaction.on_commit(partial(_task(ZIP_EXTRACT_TASK).delay, clinic_id=clinic.pk, batch_id=batch.pk))
    return batch


def upload_batch_report(*, clinic: Clinic, batch: UploadBatch) -> dict[str, object]:
    """Describe an archive's progress and, member by member, what happened (the first BATCH_ITEMS_SHOWN)."""
    items = UploadItem.objects.for_clinic(clinic).filter(batch=batch).order_by("pk")
    return {
        "batch": str(batch.uuid),
        "status": batch.status,
        "archive_name": batch.archive_name,
        "message": batch.message,
        "counts": upload_batch_counts(batch=batch),
        "items": [
            {"name": item.name, "outcome": item.outcome, "reason": item.reason} for item in items[:BATCH_ITEMS_SHOWN]
        ],
    }

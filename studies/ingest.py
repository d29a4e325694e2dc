"""Ingest one DICOM file: validate, deduplicate, reserve quota, store encrypted, index.

Every way in (browser upload, ZIP extraction, STOW-RS, C-STORE) calls :func:`instance_ingest`, so the
rules live in one place:

1. ``parse_instance`` validates the file (nothing is stored when it raises ``InvalidDicom``).
2. A SOP Instance UID already stored with the same SHA-256 is *already present*; with other content
   it is a conflict: audited, refused, the stored instance untouched.
3. The clinic's quota is checked and reserved in one conditional UPDATE, so parallel uploads can't
   pass it together.
4. ``object_put`` streams the file through encryption into the primary store (durable on return).
5. Patient / Study / Series / Instance rows and the counters are written in one transaction.
6. After commit, replication and the series thumbnail are queued (by id).

If anything after the reservation fails, the object is deleted, the reservation released and no index
row remains; the caller acknowledges only when this function returns.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.http import HttpRequest
from django.utils import timezone

from studies import admission, dicom
from studies.errors import InstanceConflict, InvalidDicom, QuotaExceeded
from studies.models import Instance, Patient, Series, Study
from studies.outbound import routing
from tenants.audit import audit_record
from tenants.models import Clinic, User

logger = logging.getLogger(__name__)

# A series' thumbnail is rendered once the series has stopped growing for this long, not once per file.
THUMBNAIL_DEBOUNCE_SECONDS = 15


class IngestOutcome(StrEnum):
    STORED = "stored"
    ALREADY_PRESENT = "already_present"


@dataclass(frozen=True)
class IngestResult:
    outcome: IngestOutcome
    instance: Instance


def instance_ingest(
    *,
    clinic: Clinic,
    source_path: str,
    source: str = "upload",
    request: HttpRequest | None = None,
    actor: User | None = None,
    dicom_node: Any = None,
    anonymize_project: Any = None,
    upload_link: Any = None,
) -> IngestResult:
    """Validate, store and index one DICOM file; return whether it was stored or already present.

    When the clinic, the request's API token or upload link, or the DICOM node says "anonymize on
    ingest" (or ``anonymize_project`` is given), only an anonymized copy is stored: the original is
    never written. ``upload_link`` (or the request's) marks an outside sender (``studies.admission``).

    Raises InvalidDicom (nothing stored), InstanceConflict (audited; the stored instance untouched),
    QuotaExceeded (the message says how much space is left, or why uploads are paused), InstanceHeld
    (kept in quarantine, not indexed: ``studies.admission``), StudyBeingPurged and the archive's
    StorageUnavailable.
    """
    upload_link = upload_link or admission.upload_link_of(request)
    project = None
    if source != "anonymize":
        from studies.anonymize import services as anonymize

        project = anonymize_project or anonymize.project_for_ingest(
            clinic=clinic,
            api_token=getattr(request, "api_token", None),
            dicom_node=dicom_node,
            upload_link=upload_link,
        )
    calling_ae_title = getattr(dicom_node, "ae_title", "")
    if project is None:
        return _ingest_file(clinic=clinic, source_path=source_path, source=source, request=request, actor=actor,
                            upload_link=upload_link, calling_ae_title=calling_ae_title)
    # A broken file is refused for what it is, before anonymization could hide why.
    dicom.parse_instance(source_path)
    anonymized_path, anonymized = anonymize.anonymize_for_ingest(project=project, source_path=source_path)
    try:
        result = _ingest_file(clinic=clinic, source_path=anonymized_path, source=source, request=request, actor=actor,
                              upload_link=upload_link, calling_ae_title=calling_ae_title)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(anonymized_path)
    anonymize.ingest_result_link(project=project, study=result.instance.series.study,
                                 needs_review=anonymized.report.needs_review)
    return result


def _ingest_file(
    *, clinic: Clinic, source_path: str, source: str, request: HttpRequest | None, actor: User | None,
    upload_link: Any = None, calling_ae_title: str = "",
) -> IngestResult:
    parsed = dicom.parse_instance(source_path)
    size = os.path.getsize(source_path)

    existing = _existing_instance(clinic=clinic, sop_instance_uid=parsed.sop_instance_uid)
    # An outside sender's different file under a stored UID is held (studies.admission), not refused.
    if existing is not None and (upload_link is None or _sha256(source_path) == existing.sha256):
        return _duplicate(clinic=clinic, existing=existing, source_path=source_path, request=request, actor=actor)

    from billing import selectors as billing_selectors

    paused = billing_selectors.upload_block_reason(clinic=clinic)
    if paused:
        raise QuotaExceeded(paused)
    quota_reserve(clinic=clinic, size_bytes=size)
    stored = None
    try:
        from studies.backup import replication

        with open(source_path, "rb") as fileobj:
            # REPLICATION_MODE=sync writes both stores in parallel here (studies.backup.replication).
            object_uuid = uuid.uuid4()
            stored = replication.object_put_for_ingest(clinic=clinic, source=fileobj, object_uuid=object_uuid)
        with transaction.atomic():
            # Trash, patient identity and outside-sender rules: a held file goes to quarantine, unindexed.
            held = admission.instance_admit_or_hold(clinic=clinic, parsed=parsed, stored=stored, source=source,
                                                    request=request, actor=actor, upload_link=upload_link)
            if held is None:
                instance, study_created = instance_index_write(clinic=clinic, parsed=parsed, stored=stored,
                                                               instance_uuid=object_uuid)
                routing.instances_route(clinic=clinic, instances=[instance], source=source,
                                        calling_ae_title=calling_ae_title)
            if held is None and study_created:
                audit_record(
                    clinic=clinic,
                    action="study.stored",
                    request=request,
                    actor=actor,
                    object_type="study",
                    object_id=str(instance.series.study.uuid),
                    details={"source": source, "first_instance": str(instance.uuid)},
                )
    except IntegrityError:
        # Another upload indexed the same SOP Instance UID between our check and our insert.
        _undo(clinic=clinic, size=size, stored=stored)
        existing = _existing_instance(clinic=clinic, sop_instance_uid=parsed.sop_instance_uid)
        if existing is None:
            raise
        return _duplicate(clinic=clinic, existing=existing, source_path=source_path, request=request, actor=actor)
    except BaseException:
        _undo(clinic=clinic, size=size, stored=stored)
        raise
    if held is not None:
        if held.object_key != stored.key:
            _undo(clinic=clinic, size=size, stored=stored)  # the same file was already held
        raise admission.held_error(held=held)
    # Registered after our transaction closed: a failing enqueue must never undo a committed ingest
    # (robust callbacks only log), and the replication sweep catches anything lost here.
    _after_commit(instance=instance)
    _usage_check_soon(clinic=clinic)
    logger.info("Stored instance %s of clinic %s (%s, %d bytes)", instance.uuid, clinic.pk, source, size)
    return IngestResult(IngestOutcome.STORED, instance)


# Usage warnings (80% and 95% of the quota) are checked at most this often per clinic, not per file.
USAGE_CHECK_SECONDS = 60


def _usage_check_soon(*, clinic: Clinic) -> None:
    if not cache.add(f"usage-check:{clinic.pk}", 1, timeout=USAGE_CHECK_SECONDS):
        return
    from billing import tasks as billing_tasks

    transaction.on_commit(lambda: billing_tasks.usage_warnings_check.delay(clinic_id=clinic.pk), robust=True)


def quota_reserve(*, clinic: Clinic, size_bytes: int) -> None:
    """Reserve ``size_bytes`` of the clinic's quota, or raise QuotaExceeded saying what is left.

    One conditional UPDATE does the check and the reservation, so concurrent uploads can't both pass.
    """
    updated = Clinic.objects.filter(pk=clinic.pk, used_bytes__lte=F("quota_bytes") - size_bytes).update(
        used_bytes=F("used_bytes") + size_bytes
    )
    if updated:
        return
    row = Clinic.objects.filter(pk=clinic.pk).values("quota_bytes", "used_bytes").get()
    left = max(row["quota_bytes"] - row["used_bytes"], 0)
    raise QuotaExceeded(
        f"Not enough storage left: this file needs {format_bytes(size_bytes)} but only {format_bytes(left)} "
        f"of the clinic's {format_bytes(row['quota_bytes'])} is free. Free space or choose a larger plan.",
        bytes_left=left,
        bytes_needed=size_bytes,
    )


def quota_release(*, clinic: Clinic, size_bytes: int) -> None:
    """Give back a reservation made by :func:`quota_reserve` (never below zero)."""
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=Greatest(F("used_bytes") - size_bytes, Value(0)))


def format_bytes(size: int) -> str:
    """Return a size for people: ``512 bytes``, ``3.4 MB``, ``1.2 GB``."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} bytes"  # unreachable; keeps type checkers content


def _existing_instance(*, clinic: Clinic, sop_instance_uid: str) -> Instance | None:
    return Instance.objects.for_clinic(clinic).filter(sop_instance_uid=sop_instance_uid).first()


def _duplicate(
    *, clinic: Clinic, existing: Instance, source_path: str, request: HttpRequest | None, actor: User | None
) -> IngestResult:
    if _sha256(source_path) == existing.sha256:
        return IngestResult(IngestOutcome.ALREADY_PRESENT, existing)
    audit_record(
        clinic=clinic,
        action="instance.conflict",
        request=request,
        actor=actor,
        object_type="instance",
        object_id=str(existing.uuid),
        result="refused",
    )
    logger.warning("Refused conflicting content for instance %s of clinic %s", existing.uuid, clinic.pk)
    raise InstanceConflict(
        "An instance with the same SOP Instance UID is already stored with different content; the stored one was kept.",
        instance=str(existing.uuid),
    )


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fileobj:
        while chunk := fileobj.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _undo(*, clinic: Clinic, size: int, stored: Any) -> None:
    """Remove what a failed ingest left behind: the object, then the quota reservation."""
    if stored is not None:
        from studies.archive import objects

        try:
            objects.object_delete(clinic=clinic, key=stored.key)
        except Exception:  # noqa: BLE001 - the original error matters more; an orphan object holds no index row
            logger.exception("Could not delete orphan object %s after a failed ingest", stored.key)
    quota_release(clinic=clinic, size_bytes=size)


def instance_index_write(
    *,
    clinic: Clinic,
    parsed: dicom.ParsedInstance,
    stored: Any,
    instance_uuid: uuid.UUID | None = None,
    replicated_at: Any = None,
    verified_at: Any = None,
) -> tuple[Instance, bool]:
    """Write the index rows for one stored object; return the instance and whether its study is new.

    ``stored`` names the object (key, key_id, size_bytes, sha256). The instance takes the object's uuid,
    so an index rebuilt from the replica (``rebuild_index``) gives every instance its uuid back. Runs in
    the caller's transaction; quota accounting is the caller's. Raises IntegrityError when the SOP
    Instance UID is already indexed, InvalidDicom when the series belongs to another study.
    """
    now = timezone.now()
    patient, _ = Patient.objects.get_or_create(
        clinic=clinic,
        patient_id=parsed.patient_id,
        issuer_of_patient_id=parsed.issuer_of_patient_id,
        defaults={
            "patient_name": parsed.patient_name,
            "patient_birth_date": parsed.patient_birth_date,
            "patient_sex": parsed.patient_sex,
        },
    )
    study, study_created = Study.objects.get_or_create(
        clinic=clinic,
        study_instance_uid=parsed.study_instance_uid,
        defaults={
            "patient": patient,
            "study_id": parsed.study_id,
            "study_date": parsed.study_date,
            "study_time": parsed.study_time,
            "accession_number": parsed.accession_number,
            "study_description": parsed.study_description,
            "referring_physician_name": parsed.referring_physician_name,
        },
    )
    # The study row lock serialises concurrent ingests into one study, so counters and the modality
    # list are never computed from stale values.
    study = Study.objects.for_clinic(clinic).select_for_update().get(pk=study.pk)
    series, series_created = Series.objects.get_or_create(
        clinic=clinic,
        series_instance_uid=parsed.series_instance_uid,
        defaults={
            "study": study,
            "modality": parsed.modality,
            "series_number": parsed.series_number,
            "series_description": parsed.series_description,
            "body_part_examined": parsed.body_part_examined,
            "series_date": parsed.study_date,
            "series_time": parsed.study_time,
        },
    )
    if series.study_id != study.pk:
        raise InvalidDicom("The file's Series Instance UID already belongs to another study in this clinic.")
    instance = Instance.objects.create(
        clinic=clinic,
        series=series,
        sop_instance_uid=parsed.sop_instance_uid,
        sop_class_uid=parsed.sop_class_uid,
        instance_number=parsed.instance_number,
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        number_of_frames=parsed.number_of_frames,
        rows=parsed.rows,
        columns=parsed.columns,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        object_key=stored.key,
        key_id=stored.key_id,
        metadata=parsed.metadata,
        stored_at=now,
        replicated_at=replicated_at,
        replica_verified_at=verified_at,
        **({"uuid": instance_uuid} if instance_uuid is not None else {}),
    )
    Series.objects.filter(pk=series.pk).update(number_of_instances=F("number_of_instances") + 1)
    Study.objects.filter(pk=study.pk).update(
        number_of_instances=F("number_of_instances") + 1,
        number_of_series=F("number_of_series") + (1 if series_created else 0),
        size_bytes=F("size_bytes") + stored.size_bytes,
        modalities_in_study=_add_value(study.modalities_in_study, parsed.modality, 128),
        body_part_examined=_add_value(study.body_part_examined, parsed.body_part_examined, 128),
        updated_at=now,
    )
    return instance, study_created


def _add_value(joined: str, value: str, max_length: int) -> str:
    """Add ``value`` to a backslash-separated set, keeping it sorted and within ``max_length``."""
    values = {v for v in joined.split("\\") if v}
    if value and value not in values and "\\" not in value:
        candidate = "\\".join(sorted(values | {value}))
        if len(candidate) <= max_length:
            return candidate
    return joined


def _after_commit(*, instance: Instance) -> None:
    """Queue replication and the series thumbnail once the index rows are committed."""
    from studies import tasks

    try:
        from studies.backup import replication
    except ImportError:
        replication = None
    if replication is not None and hasattr(replication, "instance_replication_start"):
        transaction.on_commit(lambda: replication.instance_replication_start(instance=instance), robust=True)
    elif hasattr(tasks, "instance_replicate"):
        transaction.on_commit(
            lambda: tasks.instance_replicate.delay(clinic_id=instance.clinic_id, instance_id=instance.pk),
            robust=True,
        )

    render = getattr(tasks, "series_thumbnail_render", None)
    if render is None:
        return
    clinic_id, series_id = instance.clinic_id, instance.series_id

    def enqueue_thumbnail() -> None:
        # Debounce: one render per series per quiet period, scheduled after the period so it sees the
        # files that arrived meanwhile.
        if cache.add(f"thumbnail-pending:{series_id}", 1, timeout=THUMBNAIL_DEBOUNCE_SECONDS):
            render.apply_async(
                kwargs={"clinic_id": clinic_id, "series_id": series_id}, countdown=THUMBNAIL_DEBOUNCE_SECONDS
            )

    transaction.on_commit(enqueue_thumbnail, robust=True)

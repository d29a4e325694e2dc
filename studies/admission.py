"""Where an incoming instance may be filed: the rules ingest applies before it writes index rows.

Three ways an acknowledged image could be lost or misfiled, each refused here:

- its study is in the trash: the study is brought back (audited), or, while the purge is already
  erasing it, the file is refused as "send again shortly" (nothing is acknowledged into the trash);
- its Study Instance UID is already a study of another patient (Patient ID, issuer, birth date or
  name disagree): the instance is held in quarantine for an owner or admin, not filed under the
  wrong patient;
- it comes through an upload link (an outside sender) and names a study, series or instance already
  stored: it is held in quarantine too, and the sender gets the same answer as for a new file, so a
  link can neither add to existing studies nor probe which UIDs exist.

Held instances keep their encrypted object (replicated like any other, counted in the quota);
``studies.quarantine`` lists them and files or discards them. Ingest calls :func:`instance_admit_or_hold`
inside its transaction, before it writes the index rows.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from typing import Any

from celery import current_app
from django.db import transaction
from django.db.models import QuerySet

from portal import prepared
from studies import dicom
from studies.archive.objects import StoredObject
from studies.errors import InstanceHeld, PatientMismatch, StudyBeingPurged
from studies.models import Instance, Patient, QuarantinedInstance, Series, Study
from tenants.audit import Actor, audit_record
from tenants.models import Clinic, User

logger = logging.getLogger(__name__)

Reason = QuarantinedInstance.Reason

_BEING_PURGED = "This file's study is being erased from the trash right now; send the file again in a few minutes."
_STUDY_FIELDS = tuple(f.attname for f in Study._meta.concrete_fields)
_PATIENT_FIELDS = tuple(f.attname for f in Patient._meta.concrete_fields)


def instance_admit_or_hold(
    *,
    clinic: Clinic,
    parsed: dicom.ParsedInstance,
    stored: StoredObject,
    source: str,
    by: Actor | None = None,
    actor: User | None = None,
    upload_link: Any = None,
    locked: dict[str, Study | None] | None = None,
) -> QuarantinedInstance | None:
    """Apply the admission rules to a stored object; return its quarantine entry when it is held.

    None means: write its index rows now (in the same transaction). A held entry whose ``object_key``
    is not ``stored.key`` is the same file held earlier; the caller deletes the new copy.
    """
    reason = instance_admit(clinic=clinic, parsed=parsed, by=by, actor=actor, upload_link=upload_link, locked=locked)
    if reason is None:
        return None
    held, _ = instance_hold(
        clinic=clinic,
        parsed=parsed,
        stored=stored,
        reason=reason,
        source=source,
        by=by,
        actor=actor,
        upload_link=upload_link,
    )
    return held


def instance_admit(
    *,
    clinic: Clinic,
    parsed: dicom.ParsedInstance,
    by: Actor | None = None,
    actor: User | None = None,
    upload_link: Any = None,
    locked: dict[str, Study | None] | None = None,
) -> str | None:
    """Decide whether the instance may join the index; return a quarantine reason to hold it instead.

    Run inside the ingest transaction: the stored study's row is locked here, so the trash purge's claim
    (``studies.browse.services.study_purge``) and this decision can't interleave. A trashed study is restored
    (audited) before the instance joins it. Raises StudyBeingPurged while the purge erases the study.
    ``locked`` (study UID to row, filled in here) lets the files of one batch share one lookup per study:
    the row stays locked until the transaction ends.
    """
    uid = parsed.study_instance_uid
    if locked is not None and uid in locked:
        study = locked[uid]
    else:
        study = _study_locked(clinic=clinic, study_instance_uid=uid)
        if locked is not None:
            locked[uid] = study
    if upload_link is not None and _already_known(clinic=clinic, parsed=parsed, study=study):
        return Reason.OUTSIDE_SENDER
    if study is None:
        return None
    if not patient_matches(study=study, parsed=parsed):
        return Reason.PATIENT_MISMATCH
    if study.deleted_at is not None:
        study_restore_from_trash(clinic=clinic, study=study, reason="new instance received", by=by, actor=actor)
    return None


def _locked_study_rows(*, clinic_id: int, study_instance_uid: str) -> QuerySet:
    # FOR UPDATE without OF: the patient's row is locked with the study's, as select_related's join did.
    return (
        Study.objects.for_clinic(clinic_id)
        .select_for_update()
        .filter(study_instance_uid=study_instance_uid)
        .values(*_STUDY_FIELDS, *(f"patient__{name}" for name in _PATIENT_FIELDS))
    )


def _study_locked(*, clinic: Clinic, study_instance_uid: str) -> Study | None:
    """The clinic's study with this UID and its patient, its row locked until the transaction ends; or None.

    Every ingest batch asks this once per study: compiled once (portal.prepared), as building the
    queryset took most of its CPU (1.1-1.8 ms of it on a slow host, against 0.23 ms compiled).
    """
    rows = prepared.rows(
        "admission.study_locked", _locked_study_rows, clinic_id=clinic.pk, study_instance_uid=study_instance_uid
    )
    if not rows:
        return None  # the UID is unique within a clinic: one row at most
    study: Study = prepared.model_from_row(Study, rows[0], _STUDY_FIELDS)
    study.patient = prepared.model_from_row(Patient, rows[0], _PATIENT_FIELDS, prefix="patient__")
    return study


def _already_known(*, clinic: Clinic, parsed: dicom.ParsedInstance, study: Study | None) -> bool:
    if study is not None:
        return True
    return (
        Series.objects.for_clinic(clinic).filter(series_instance_uid=parsed.series_instance_uid).exists()
        or Instance.objects.for_clinic(clinic).filter(sop_instance_uid=parsed.sop_instance_uid).exists()
    )


def _normalized_name(name: str) -> str:
    # "DOE^JOHN", "doe^john^^^" and "Doe^John " are one name; component order stays significant.
    return re.sub(r"\s+", " ", name.upper()).strip(" ^").replace(" ^", "^").replace("^ ", "^").rstrip("^")


def patient_matches(*, study: Study, parsed: dicom.ParsedInstance) -> bool:
    """Say whether the file's patient is the study's: same Patient ID and issuer; birth date and name
    agree wherever both sides have one."""
    patient = study.patient
    if parsed.patient_id.strip() != patient.patient_id.strip():
        return False
    if parsed.issuer_of_patient_id.strip() != patient.issuer_of_patient_id.strip():
        return False
    if (
        parsed.patient_birth_date
        and patient.patient_birth_date
        and parsed.patient_birth_date != patient.patient_birth_date
    ):
        return False
    mine, theirs = _normalized_name(parsed.patient_name), _normalized_name(patient.patient_name)
    return not (mine and theirs and mine != theirs)


def study_restore_from_trash(
    *, clinic: Clinic, study: Study, reason: str, by: Actor | None = None, actor: User | None = None
) -> None:
    """Bring a trashed study back (audited as ``study.restored`` with ``reason``) so an instance can join it.

    Run inside the caller's transaction with the study's row locked (``select_for_update``), so the trash
    purge's claim can't interleave. Raises StudyBeingPurged while the purge is already erasing it.
    """
    if study.purge_started_at is not None:
        raise StudyBeingPurged(_BEING_PURGED)
    Study.objects.for_clinic(clinic).filter(pk=study.pk).update(deleted_at=None, deleted_by=None)
    study.deleted_at = None
    study.deleted_by = None
    audit_record(
        clinic=clinic,
        action="study.restored",
        by=by,
        actor=actor,
        object_type="study",
        object_id=str(study.uuid),
        details={"reason": reason},
    )
    logger.info("Study %s of clinic %s restored from the trash: %s", study.uuid, clinic.pk, reason)


def duplicate_admit(
    *, clinic: Clinic, study: Study, upload_link: Any = None, by: Actor | None = None, actor: User | None = None
) -> None:
    """Apply the trash rule to a file already stored in ``study`` and sent again, before it is answered "stored".

    A trashed study is brought back (audited, reason "instance received again"), as for a new file: the
    sender would otherwise keep no copy of an image the purge then erases. An outside sender's (upload link)
    copy never brings a study back. Raises StudyBeingPurged while the purge is erasing it (or has just
    erased it): sent again, the file then makes a new study. Updates ``study`` in place.
    """
    if study.deleted_at is None and study.purge_started_at is None:
        return
    with transaction.atomic():
        # Locked as the ingest transaction locks it, so the purge's claim and this decision can't interleave.
        current = Study.objects.for_clinic(clinic).select_for_update().filter(pk=study.pk).first()
        if current is None or current.purge_started_at is not None:
            raise StudyBeingPurged(_BEING_PURGED)
        if current.deleted_at is not None and upload_link is None:
            study_restore_from_trash(clinic=clinic, study=current, reason="instance received again", by=by, actor=actor)
    study.deleted_at, study.deleted_by_id = current.deleted_at, current.deleted_by_id


def instance_hold(
    *,
    clinic: Clinic,
    parsed: dicom.ParsedInstance,
    stored: StoredObject,
    reason: str,
    source: str,
    by: Actor | None = None,
    actor: User | None = None,
    upload_link: Any = None,
) -> tuple[QuarantinedInstance, bool]:
    """Record a stored object as held in quarantine (audited); return it and whether it is new.

    The same file sent again (same SOP Instance UID and content, still held) is not held twice: the
    caller deletes the new copy and gives back its quota. Runs in the caller's transaction.
    """
    again = (
        QuarantinedInstance.objects.for_clinic(clinic)
        .filter(sop_instance_uid=parsed.sop_instance_uid, sha256=stored.sha256, resolved_at__isnull=True)
        .first()
    )
    if again is not None:
        return again, False
    study = Study.objects.for_clinic(clinic).filter(study_instance_uid=parsed.study_instance_uid).first()
    held = QuarantinedInstance.objects.create(
        clinic=clinic,
        reason=reason,
        source=source,
        upload_link=upload_link,
        sop_instance_uid=parsed.sop_instance_uid,
        series_instance_uid=parsed.series_instance_uid,
        study_instance_uid=parsed.study_instance_uid,
        patient_id=parsed.patient_id,
        patient_name=parsed.patient_name,
        patient_birth_date=parsed.patient_birth_date,
        study=study,
        size_bytes=stored.size_bytes,
        sha256=stored.sha256,
        object_key=stored.key,
        key_id=stored.key_id,
    )
    audit_record(
        clinic=clinic,
        action="instance.quarantined",
        by=by,
        actor=actor,
        actor_label="" if upload_link is None else f"upload_link:{upload_link.uuid}",
        object_type="quarantined_instance",
        object_id=str(held.uuid),
        details={"reason": reason, "source": source, "study": str(study.uuid) if study else ""},
    )
    logger.warning("Held instance %s of clinic %s in quarantine (%s)", held.uuid, clinic.pk, reason)
    # Queued by name: the quarantine tasks (studies.quarantine.tasks) import the ingest path, which imports
    # this module.
    tasks = current_app.tasks
    transaction.on_commit(
        partial(tasks["studies.tasks.quarantined_replicate"].delay, clinic_id=clinic.pk, held_id=held.pk), robust=True
    )
    transaction.on_commit(partial(tasks["studies.tasks.quarantine_notify"].delay, clinic_id=clinic.pk), robust=True)
    return held, True


def held_error(*, held: QuarantinedInstance) -> InstanceHeld:
    """The error a clinic's own sender gets for a held instance (an outside sender is told "received")."""
    if held.reason == Reason.PATIENT_MISMATCH:
        return PatientMismatch(
            "Held for review: this file's patient differs from that of the stored study with the same Study "
            "Instance UID. An owner or admin can file it or discard it on the Quarantine page.",
            held=str(held.uuid),
        )
    return InstanceHeld(
        "Held for review: this file names a study, series or instance already stored. An owner or admin can "
        "file it or discard it on the Quarantine page.",
        held=str(held.uuid),
    )

"""Trash and deletion state of studies, recorded in the backup store so a rebuild never resurrects one.

The replica holds every image, but not whether its study sat in the trash or was purged. Each change
(trash, restore from the trash, purge) writes a small document to the replica at
``clinics/<clinic uuid>/state/studies/<study uuid>``, encrypted with the clinic key (it names the Study
Instance UID), and ``study_states_apply`` re-applies those documents to a rebuilt or restored index:

- ``trashed``: the study goes back in the trash with its original ``deleted_at`` (purge date unchanged);
- ``live``: a study taken out of the trash after the database backup comes out of it again;
- ``purged``: the listed objects' index rows go (their objects were deleted, or are being deleted).

When records disagree about one Study Instance UID, the newest wins; when in doubt the study stays in
the trash, which is restorable, rather than coming back live.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Sum, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from studies.archive import crypto, keys, stores
from studies.archive.errors import ArchiveError, ObjectMissing, StorageUnavailable
from studies.models import Instance, Patient, Series, Study
from tenants.audit import audit_record
from tenants.models import Clinic

logger = logging.getLogger(__name__)

STATE_FORMAT = "pacs-portal-study-state"
TRASHED, LIVE, PURGED = "trashed", "live", "purged"


def study_state_prefix(clinic: Clinic) -> str:
    return f"clinics/{clinic.uuid}/state/studies/"


def study_state_key(*, clinic: Clinic, study_uuid: Any) -> str:
    return f"{study_state_prefix(clinic)}{study_uuid}"


def study_state_publish(*, clinic: Clinic, study: Study, state: str, object_keys: list[str] | None = None) -> str:
    """Write the study's state document to the replica; raises StorageUnavailable when it cannot."""
    if state not in {TRASHED, LIVE, PURGED}:
        raise ValueError(f"Unknown study state {state!r}.")
    key = study_state_key(clinic=clinic, study_uuid=study.uuid)
    document = {
        "format": STATE_FORMAT,
        "version": 1,
        "study_uuid": str(study.uuid),
        "study_instance_uid": study.study_instance_uid,
        "state": state,
        "deleted_at": study.deleted_at.isoformat() if study.deleted_at else None,
        "recorded_at": timezone.now().isoformat(),
        "object_keys": sorted(object_keys or []),
    }
    key_id, clinic_key = keys.clinic_key_get(clinic)
    reader = crypto.EncryptingReader(
        io.BytesIO(json.dumps(document, sort_keys=True).encode()),
        key_id=key_id, clinic_key=clinic_key, clinic_uuid=clinic.uuid, object_key=key,
    )
    stores.get_store("replica").put(key, reader)
    return key


def study_state_publish_current(*, clinic: Clinic, study_id: int) -> str | None:
    """Publish what the index says now (trashed or live); None when the study is gone (purged)."""
    study = Study.objects.for_clinic(clinic).filter(pk=study_id).first()
    if study is None:
        return None
    return study_state_publish(clinic=clinic, study=study, state=TRASHED if study.deleted_at else LIVE)


@dataclass(frozen=True)
class StudyState:
    study_uuid: str
    study_instance_uid: str
    state: str
    deleted_at: datetime | None
    recorded_at: datetime
    object_keys: tuple[str, ...] = ()


def _read(clinic: Clinic, key: str) -> StudyState | None:
    raw = stores.get_store("replica").open(key)
    try:
        header = crypto.header_read(raw)
        clinic_key = keys.clinic_key_for_object(clinic=clinic, key_id=header.key_id)
        reader = crypto.DecryptingReader(raw, header=header, clinic_key=clinic_key, clinic_uuid=clinic.uuid,
                                         object_key=key)
        with contextlib.closing(reader):
            document = json.loads(reader.read(16 * 1024 * 1024))
    finally:
        raw.close()
    if document.get("format") != STATE_FORMAT:
        return None
    return StudyState(
        study_uuid=document["study_uuid"],
        study_instance_uid=document["study_instance_uid"],
        state=document["state"],
        deleted_at=datetime.fromisoformat(document["deleted_at"]) if document.get("deleted_at") else None,
        recorded_at=datetime.fromisoformat(document["recorded_at"]),
        object_keys=tuple(document.get("object_keys") or ()),
    )


def study_states_read(*, clinic: Clinic) -> list[StudyState]:
    """Return the clinic's state documents from the replica, oldest first (unreadable ones are logged)."""
    found = []
    for key in stores.get_store("replica").list(study_state_prefix(clinic)):
        try:
            state = _read(clinic, key)
        except ObjectMissing:
            continue
        except StorageUnavailable:
            raise
        except (ArchiveError, ValueError, KeyError) as exc:
            logger.error("study state document %s cannot be read: %s", key, exc)
            continue
        if state is not None:
            found.append(state)
    return sorted(found, key=lambda state: state.recorded_at)


@dataclass
class StatesApplied:
    trashed: int = 0
    restored: int = 0
    purged_instances: int = 0
    unreadable: list[str] = field(default_factory=list)


def _purge_rows(*, clinic: Clinic, object_keys: tuple[str, ...]) -> int:
    instances = Instance.objects.for_clinic(clinic).filter(object_key__in=object_keys)
    if not instances.exists():
        return 0
    with transaction.atomic():
        series_ids = set(instances.values_list("series_id", flat=True))
        freed = instances.aggregate(total=Sum("size_bytes"))["total"] or 0
        count = instances.count()
        instances.delete()
        Clinic.objects.filter(pk=clinic.pk).update(used_bytes=Greatest(F("used_bytes") - freed, Value(0)))
        series = Series.objects.for_clinic(clinic).filter(pk__in=series_ids)
        study_ids = set(series.values_list("study_id", flat=True))
        series.annotate(n=Count("instances")).filter(n=0).delete()
        studies = Study.objects.for_clinic(clinic).filter(pk__in=study_ids)
        patient_ids = set(studies.values_list("patient_id", flat=True))
        studies.annotate(n=Count("series")).filter(n=0).delete()
        Patient.objects.for_clinic(clinic).filter(pk__in=patient_ids).annotate(n=Count("studies")).filter(
            n=0
        ).delete()
    return count


def study_states_apply(*, clinic: Clinic) -> StatesApplied:
    """Re-apply the replica's trash and purge records to the clinic's index (rebuild_index calls this).

    Idempotent: a study already in the recorded state is left alone.
    """
    applied = StatesApplied()
    states = study_states_read(clinic=clinic)
    newest: dict[str, StudyState] = {}
    for state in states:
        if state.state == PURGED:
            applied.purged_instances += _purge_rows(clinic=clinic, object_keys=state.object_keys)
        else:
            newest[state.study_instance_uid] = state
    for uid, state in newest.items():
        study = Study.objects.for_clinic(clinic).filter(study_instance_uid=uid).first()
        if study is None:
            continue
        if state.state == TRASHED and study.deleted_at is None:
            Study.objects.for_clinic(clinic).filter(pk=study.pk).update(deleted_at=state.deleted_at or state.recorded_at)
            applied.trashed += 1
            _audit(clinic, study, "study.trash_reapplied", state)
        elif state.state == LIVE and study.deleted_at is not None and study.deleted_at <= state.recorded_at:
            Study.objects.for_clinic(clinic).filter(pk=study.pk).update(deleted_at=None, deleted_by=None)
            applied.restored += 1
            _audit(clinic, study, "study.restore_reapplied", state)
    return applied


def _audit(clinic: Clinic, study: Study, action: str, state: StudyState) -> None:
    # The original entry may be among those lost with the database: the trail says what recovery did.
    audit_record(clinic=clinic, action=action, actor_label="system (recovery)", object_type="study",
                 object_id=str(study.uuid), details={"recorded_at": state.recorded_at.isoformat()})


def study_states_sweep() -> int:
    """Publish the state of every trashed study whose document is missing in the replica; return how many."""
    published = 0
    replica = stores.get_store("replica")
    # Unscoped: the hourly sweep covers every clinic's trash.
    for study in Study.objects.filter(deleted_at__isnull=False).select_related("clinic").order_by("pk").iterator():
        if replica.exists(study_state_key(clinic=study.clinic, study_uuid=study.uuid)):
            continue
        study_state_publish(clinic=study.clinic, study=study, state=TRASHED)
        published += 1
    return published

"""State changes of studies after ingest: trash, restore and purge.

Ingest itself lives in ``studies.ingest``; thumbnails in ``studies.browse.thumbnails``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Sum, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from portal.exceptions import PortalError
from studies.archive import objects
from studies.archive.errors import ObjectMissing
from studies.backup import study_state
from studies.backup import tasks as backup_tasks
from studies.browse.selectors import StudySearch
from studies.models import Instance, Patient, Series, Study
from tenants.audit import Actor, audit_record, read_first_in_window
from tenants.models import Clinic, User

logger = logging.getLogger(__name__)


def study_purge_at(study: Study) -> datetime | None:
    """When a trashed study is purged for good."""
    if study.deleted_at is None:
        return None
    return study.deleted_at + timedelta(days=settings.TRASH_DAYS)


@transaction.atomic
def study_delete(*, clinic: Clinic, study: Study, actor: User | None = None,
                 by: Actor | None = None) -> Study:
    """Move a study to the trash; it stays restorable for ``TRASH_DAYS`` days, then is purged.

    Raises PortalError when the study is already in the trash.
    """
    updated = Study.objects.for_clinic(clinic).filter(pk=study.pk, deleted_at__isnull=True).update(
        deleted_at=timezone.now(), deleted_by=actor if actor and actor.is_authenticated else None
    )
    if not updated:
        raise PortalError("This study is already in the trash.")
    study.refresh_from_db(fields=["deleted_at", "deleted_by"])
    purge_at = study_purge_at(study)
    assert purge_at is not None, "the update above set deleted_at"
    audit_record(clinic=clinic, action="study.deleted", by=by, actor=actor, object_type="study",
                 object_id=str(study.uuid), details={"purge_at": purge_at.isoformat()})
    _state_publish_soon(clinic=clinic, study=study)
    return study


@transaction.atomic
def study_restore(*, clinic: Clinic, study: Study, actor: User | None = None,
                  by: Actor | None = None, reason: str = "") -> Study:
    """Take a study out of the trash; ``reason`` says why when it was not a person's choice.

    Raises PortalError when it is not in the trash (restored already, or purged meanwhile) or when the
    purge has begun erasing its objects.
    """
    # One conditional UPDATE: the purge claims the study the same way, so exactly one of them wins.
    updated = Study.objects.for_clinic(clinic).filter(
        pk=study.pk, deleted_at__isnull=False, purge_started_at__isnull=True
    ).update(deleted_at=None, deleted_by=None)
    if not updated:
        if Study.objects.for_clinic(clinic).filter(pk=study.pk, purge_started_at__isnull=False).exists():
            raise PortalError("This study is being erased from the trash; it can no longer be restored.")
        raise PortalError("This study is not in the trash any more.")
    study.refresh_from_db(fields=["deleted_at", "deleted_by"])
    audit_record(clinic=clinic, action="study.restored", by=by, actor=actor, object_type="study",
                 object_id=str(study.uuid), details={"reason": reason} if reason else None)
    _state_publish_soon(clinic=clinic, study=study)
    return study


def _state_publish_soon(*, clinic: Clinic, study: Study) -> None:
    # The replica records the trash state so that rebuild_index never brings a trashed study back live;
    # a lost message is caught by the hourly study_states_sweep.
    transaction.on_commit(
        lambda: backup_tasks.study_state_publish.delay(clinic_id=clinic.pk, study_id=study.pk), robust=True
    )


def _delete_object(*, clinic: Clinic, key: str, store: str) -> None:
    try:
        objects.object_delete(clinic=clinic, key=key, store=store)
    except ObjectMissing:
        # A previous, interrupted purge already removed it: purging is idempotent.
        pass


def study_purge(*, clinic: Clinic, study_id: int, deleted_before: datetime | None = None) -> bool:
    """Delete a trashed study for good: its objects in both stores, its index rows, its quota use.

    The purge first claims the study (``purge_started_at``, one conditional UPDATE): from then on a
    restore is refused and new files for it are turned away, so no live study can lose its objects.
    ``deleted_before`` (the periodic purge's cutoff) leaves alone a study trashed again since it was
    queued. Objects go first and rows last, each object re-checked just before it is deleted, so an
    interrupted purge leaves a claimed study that the next run finishes. Returns whether it purged.
    Raises StorageUnavailable when a store cannot be reached (the task retries).
    """
    trashed = Study.objects.for_clinic(clinic).filter(pk=study_id, deleted_at__isnull=False)
    if deleted_before is not None:
        trashed = trashed.filter(Q(deleted_at__lte=deleted_before) | Q(purge_started_at__isnull=False))
    trashed.filter(purge_started_at__isnull=True).update(purge_started_at=timezone.now())
    study = trashed.filter(purge_started_at__isnull=False).first()
    if study is None:
        return False
    keys = list(Instance.objects.for_clinic(clinic).filter(series__study=study).values_list("object_key", flat=True))
    thumbnails = list(
        Series.objects.for_clinic(clinic).filter(study=study).exclude(thumbnail_key="")
        .values_list("thumbnail_key", flat=True)
    )
    # Recorded before any object goes, so a rebuild from the replica never indexes this study again.
    study_state.study_state_publish(clinic=clinic, study=study, state=study_state.PURGED, object_keys=keys)
    for key in keys:
        if not _purge_still_owns(clinic=clinic, study_id=study_id, key=key):
            logger.error("purge of study %s of clinic %s stopped: object %s is no longer the purge's",
                         study.uuid, clinic.pk, key)
            return False
        _delete_object(clinic=clinic, key=key, store="primary")
        # The replica is deleted through the replica's own store (and credentials).
        _delete_object(clinic=clinic, key=key, store="replica")
    for key in thumbnails:
        # A thumbnail is an image of the patient too, and replica_reconcile copies it to the replica.
        _delete_object(clinic=clinic, key=key, store="primary")
        _delete_object(clinic=clinic, key=key, store="replica")

    with transaction.atomic():
        study = (
            Study.objects.for_clinic(clinic).select_for_update()
            .filter(pk=study_id, deleted_at__isnull=False, purge_started_at__isnull=False).first()
        )
        if study is None:
            return False
        instances = Instance.objects.for_clinic(clinic).filter(series__study=study)
        freed = instances.aggregate(total=Sum("size_bytes"))["total"] or 0
        count = instances.count()
        instances.delete()
        Series.objects.for_clinic(clinic).filter(study=study).delete()
        patient_id = study.patient_id
        study_uuid = str(study.uuid)
        study.delete()
        if not Study.objects.for_clinic(clinic).filter(patient_id=patient_id).exists():
            Patient.objects.for_clinic(clinic).filter(pk=patient_id).delete()
        Clinic.objects.filter(pk=clinic.pk).update(used_bytes=Greatest(F("used_bytes") - freed, Value(0)))
        audit_record(clinic=clinic, action="study.purged", object_type="study", object_id=study_uuid,
                     details={"instances": count, "freed_bytes": freed})
    logger.info("purged study %s of clinic %s: %d instances, %d bytes", study_uuid, clinic.pk, count, freed)
    return True


def _purge_still_owns(*, clinic: Clinic, study_id: int, key: str) -> bool:
    """Say whether ``key`` still belongs to a study claimed by the purge (checked before each delete)."""
    return Instance.objects.for_clinic(clinic).filter(
        object_key=key, series__study_id=study_id, series__study__deleted_at__isnull=False,
        series__study__purge_started_at__isnull=False,
    ).exists()


def study_read_record(
    *, clinic: Clinic, study: Study, action: str, by: Actor, details: dict[str, object] | None = None
) -> bool:
    """Audit a read of a study's images, at most once per reader, study and action per window.

    Returns whether an entry was written (False: the same reader's read is already in the trail).
    """
    if not read_first_in_window("study", clinic.pk, by.reader_key(), action, study.uuid):
        return False
    audit_record(clinic=clinic, action=action, by=by, object_type="study", object_id=str(study.uuid),
                 details=details or {})
    return True


# Keys whose values are patient data: the audit entry names them, never their values.
_PATIENT_SEARCH_KEYS = ("patient_name", "patient_id", "accession_number", "description")


def study_search_record(
    *, clinic: Clinic, search: StudySearch, count: int, source: str, by: Actor | None = None
) -> None:
    """Audit a list of studies shown to someone: which keys were searched and how many studies were shown.

    HIPAA counts a list of names, IDs and birth dates as an access to each; the entry keeps the
    criteria that are not patient data (modality, dates, sort) and only the names of the others.
    """
    keys = [key for key in _PATIENT_SEARCH_KEYS if str(getattr(search, key) or "").strip()]
    details: dict[str, object] = {"source": source, "count": count, "sort": search.sort}
    if search.modality.strip():
        keys.append("modality")
        details["modality"] = search.modality.strip()[:16]
    for key in ("date_from", "date_to"):
        value = getattr(search, key)
        if value:
            keys.append(key)
            details[key] = value.isoformat()
    details["keys"] = keys
    audit_record(clinic=clinic, action="study.searched", by=by, object_type="study_list", details=details)

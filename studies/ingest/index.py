"""The index writer and the quota: the two database steps of storing an instance.

Used by ingest (every way in) and by ``rebuild_index`` (backup), so both write the same rows the same
way. Rows for a whole batch go in with a handful of statements: one lookup per distinct patient, study
and series, one bulk insert of the instances, one counter update per series and per study, all in the
caller's transaction. The study rows are locked (in primary-key order, so concurrent batches cannot
deadlock) before the counters are read, so concurrent batches into one study keep them exact.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F, JSONField, QuerySet, Sum, TextField, Value
from django.db.models.functions import Cast, Greatest
from django.utils import timezone

from portal import prepared
from studies import dicom
from studies.archive.objects import StoredObject
from studies.errors import InvalidDicom, QuotaExceeded
from studies.ingest.lookups import Lookups
from studies.models import Instance, Patient, QuarantinedInstance, Series, Study
from studies.patients import patient_id_identifies
from tenants.audit import audit_record
from tenants.models import Clinic

logger = logging.getLogger(__name__)

# The lookups key (studies.ingest.lookups) under which a stream remembers a stored series' study.
_SERIES_STUDY = "series-study:"


@dataclass(frozen=True)
class IndexItem:
    """One stored object to index: what its file says, and where its encrypted bytes are."""

    parsed: dicom.ParsedInstance
    stored: StoredObject
    instance_uuid: uuid.UUID | None = None
    replicated_at: datetime | None = None
    verified_at: datetime | None = None
    # The DICOM JSON header already serialized (a rebuild reads it so from an index sidecar): written as
    # it is instead of ``parsed.metadata``, sparing a decode and an encode per instance.
    metadata_json: str = ""


@dataclass(frozen=True)
class IndexWrite:
    """What a batch write did: the instances (in the items' order) and the studies it created."""

    instances: list[Instance]
    created_studies: list[Study]


def quota_reserve(*, clinic: Clinic, size_bytes: int) -> None:
    """Reserve ``size_bytes`` of the clinic's quota, or raise QuotaExceeded saying what is left.

    One conditional UPDATE does the check and the reservation, so concurrent uploads can't both pass.
    """
    # Every batch makes it: compiled once (portal.prepared).
    updated = prepared.update("ingest.quota_reserve", _quota_reservation, clinic_id=clinic.pk, size=size_bytes)
    if updated:
        return
    left, quota = quota_left(clinic=clinic)
    raise quota_exceeded(size_bytes=size_bytes, bytes_left=left, quota_bytes=quota)


def _quota_reservation(*, clinic_id: int, size: int) -> tuple[QuerySet, dict[str, Any]]:
    return Clinic.objects.filter(pk=clinic_id, used_bytes__lte=F("quota_bytes") - size), {
        "used_bytes": F("used_bytes") + size
    }


def quota_left(*, clinic: Clinic) -> tuple[int, int]:
    """Return (bytes left, quota bytes) of the clinic as committed now."""
    # Read before every batch that is not part of a stream: compiled once (portal.prepared).
    [row] = prepared.rows("ingest.quota_left", _quota_rows, clinic_id=clinic.pk)
    return max(row["quota_bytes"] - row["used_bytes"], 0), row["quota_bytes"]


def _quota_rows(*, clinic_id: int) -> QuerySet:
    return Clinic.objects.filter(pk=clinic_id).values("quota_bytes", "used_bytes")


def quota_exceeded(*, size_bytes: int, bytes_left: int, quota_bytes: int) -> QuotaExceeded:
    """The error for a file of ``size_bytes`` that does not fit, saying what is left."""
    return QuotaExceeded(
        f"Not enough storage left: this file needs {format_bytes(size_bytes)} but only {format_bytes(bytes_left)} "
        f"of the clinic's {format_bytes(quota_bytes)} is free. Free space or choose a larger plan.",
        bytes_left=bytes_left,
        bytes_needed=size_bytes,
    )


def quota_release(*, clinic: Clinic, size_bytes: int) -> None:
    """Give back a reservation made by :func:`quota_reserve` (never below zero)."""
    if size_bytes:
        Clinic.objects.filter(pk=clinic.pk).update(used_bytes=Greatest(F("used_bytes") - size_bytes, Value(0)))


@dataclass(frozen=True)
class UsageCorrection:
    used_bytes_before: int
    indexed_bytes: int  # instances (trash included) plus held files: what used_bytes must be
    corrected_by: int  # added to used_bytes (negative: it was too high)


def usage_expected(*, clinic: Clinic) -> int:
    """What the clinic's ``used_bytes`` must be: its indexed instances (trash included) plus the files
    held for review (studies.admission), which keep their room until they are filed or discarded."""
    indexed = Instance.objects.for_clinic(clinic).aggregate(total=Sum("size_bytes"))["total"] or 0
    held = (
        QuarantinedInstance.objects.for_clinic(clinic).filter(resolved_at__isnull=True)
        .aggregate(total=Sum("size_bytes"))["total"] or 0
    )
    return int(indexed) + int(held)


def usage_recount(*, clinic: Clinic, reason: str) -> UsageCorrection | None:
    """Set the clinic's ``used_bytes`` to :func:`usage_expected` if it drifted; audit the correction.

    No grace period is needed, on any number of processes or machines: a reservation is only ever made
    inside the transaction that writes its rows (``pipeline._index``), and purge, discard and rebuild
    change rows and usage in one transaction too, so committed usage always matches committed rows. A
    process killed before its commit leaves nothing (its transaction is rolled back); what differs here
    was committed by something else (an older release, a hand edit, a restored snapshot) and is drift.
    The clinic row is locked first (PostgreSQL: a transaction that reserved holds it until it commits,
    so the sums below see its rows; SQLite: transactions are IMMEDIATE, one writer at a time).
    Returns None when nothing changed.
    """
    with transaction.atomic():
        used = Clinic.objects.select_for_update().values_list("used_bytes", flat=True).get(pk=clinic.pk)
        expected = usage_expected(clinic=clinic)
        correction = expected - used
        if not correction:
            return None
        Clinic.objects.filter(pk=clinic.pk).update(used_bytes=F("used_bytes") + correction)
        audit_record(
            clinic=clinic, action="billing.usage_corrected", actor_label="system", object_type="clinic",
            object_id=str(clinic.uuid),
            details={"used_bytes_before": used, "indexed_bytes": expected, "corrected_by": correction,
                     "reason": reason},
        )
    logger.warning("usage of clinic %s corrected by %d bytes (%s; index and held files: %d)",
                   clinic.pk, correction, reason, expected)
    return UsageCorrection(used, expected, correction)


def format_bytes(size: int) -> str:
    """Return a size for people: ``512 bytes``, ``3.4 MB``, ``1.2 GB``."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} bytes"  # unreachable; keeps type checkers content


def _series_study_rows(*, clinic_id: int, **series: str) -> QuerySet:
    return Series.objects.filter(clinic_id=clinic_id, series_instance_uid__in=list(series.values())).values(
        "series_instance_uid", "study__study_instance_uid"
    )


def series_conflicts(
    *, clinic: Clinic, parsed: Sequence[dicom.ParsedInstance], lookups: Lookups | None = None
) -> dict[str, str]:
    """For each series of ``parsed`` named with more than one study, the study it belongs to.

    That is the study the clinic already files it under, or else the first file's study in the batch;
    files naming the series with any other study must be refused. With ``lookups`` (a stream's), a series
    seen stored a moment ago is not looked up again: only a hint, since a series can change study only by
    being erased and stored anew, and :func:`instances_index_write` refuses a conflicting file anyway.
    """
    named: dict[str, set[str]] = defaultdict(set)
    first: dict[str, str] = {}
    for p in parsed:
        named[p.series_instance_uid].add(p.study_instance_uid)
        first.setdefault(p.series_instance_uid, p.study_instance_uid)
    if not named:
        return {}
    stored: dict[str, str] = {}
    for series in named:
        known = lookups.recall(_SERIES_STUDY + series) if lookups is not None else None
        if known is not None:
            stored[series] = known
    unknown = [series for series in named if series not in stored]
    if unknown:
        found = {
            row["series_instance_uid"]: row["study__study_instance_uid"]
            for row in prepared.rows("ingest.series_studies", _series_study_rows, clinic_id=clinic.pk,
                                     **prepared.in_values("series", unknown))
        }
        stored.update(found)
        if lookups is not None:
            for series, study in found.items():
                lookups.remember(_SERIES_STUDY + series, study)
    accepted: dict[str, str] = {}
    for series, studies in named.items():
        owner = stored.get(series, first[series])
        if studies != {owner}:
            accepted[series] = owner
    return accepted


_SERIES_FIELDS = tuple(f.attname for f in Series._meta.concrete_fields)


def _series_rows(*, clinic_id: int, series_instance_uid: str) -> QuerySet:
    return Series.objects.filter(clinic_id=clinic_id, series_instance_uid=series_instance_uid).values(*_SERIES_FIELDS)


def _series_get_or_create(*, clinic: Clinic, series_instance_uid: str, defaults: dict[str, Any]) -> tuple[Series, bool]:
    """The clinic's series with this UID, or a new one from ``defaults``; and whether it was created.

    Most batches join a series already stored: that lookup is compiled once (portal.prepared), as
    building the ORM's get_or_create cost more CPU than the statement. A new series goes through
    get_or_create itself, whose savepoint settles a race with another batch creating it.
    """
    rows = prepared.rows(
        "ingest.series", _series_rows, clinic_id=clinic.pk, series_instance_uid=series_instance_uid
    )
    if rows:
        return prepared.model_from_row(Series, rows[0], _SERIES_FIELDS), False
    return Series.objects.get_or_create(clinic=clinic, series_instance_uid=series_instance_uid, defaults=defaults)


def _series_count_added(*, series_id: int, count: int) -> tuple[QuerySet, dict[str, Any]]:
    return Series.objects.filter(pk=series_id), {"number_of_instances": F("number_of_instances") + count}


def _patient_identity(parsed: dicom.ParsedInstance) -> dict[str, Any]:
    """What identifies a file's patient: its Patient ID and issuer, or without a real ID its name and birth date.

    An empty Patient ID (Type 2: not known) or a placeholder ("UNKNOWN", studies.patients) says nothing about
    who the patient is: two unidentified patients (an emergency, a secondary capture) must not become one, the
    second's study listed under the first's name. The ID value is kept in the identity all the same, so the
    row stores and answers it.
    """
    identified = patient_id_identifies(parsed.patient_id)
    identity: dict[str, Any] = {"patient_id": parsed.patient_id, "issuer_of_patient_id": parsed.issuer_of_patient_id,
                                "identified_by_id": identified}
    if not identified:
        identity.update(patient_name=parsed.patient_name, patient_birth_date=parsed.patient_birth_date)
    return identity


def _patient_get_or_create(*, clinic: Clinic, identity: dict[str, Any], parsed: dicom.ParsedInstance) -> Patient:
    defaults = {"patient_name": parsed.patient_name, "patient_birth_date": parsed.patient_birth_date,
                "patient_sex": parsed.patient_sex}
    if identity["identified_by_id"]:
        # The unique constraint settles a race with another batch (get_or_create's savepoint).
        patient, _ = Patient.objects.get_or_create(clinic=clinic, **identity, defaults=defaults)
        return patient
    # No constraint covers patients without a real ID: two batches racing may each make one, which only
    # splits one unidentified patient's studies in two, never merges two patients.
    found = Patient.objects.for_clinic(clinic).filter(**identity).order_by("pk").first()
    return found if found is not None else Patient.objects.create(clinic=clinic, **{**defaults, **identity})


def instances_index_write(
    *, clinic: Clinic, items: Sequence[IndexItem], locked_studies: Mapping[str, Study | None] | None = None
) -> IndexWrite:
    """Write the index rows for stored objects; runs in the caller's transaction.

    Each instance takes its object's uuid when given, so an index rebuilt from the replica gives every
    instance its uuid back. Quota accounting is the caller's. Raises IntegrityError when a SOP Instance UID
    is already indexed, InvalidDicom when a series belongs to another study (check ``series_conflicts``
    first to refuse those items alone). ``locked_studies`` (study UID to the row the caller already locked
    with ``select_for_update`` in this transaction, as admission does) spares looking those up again.
    """
    now = timezone.now()
    patients: dict[tuple[str, str], Patient] = {}
    studies: dict[str, Study] = {}
    created: list[Study] = []
    # Rows locked by the caller in this transaction: read under the lock, so current; no patient is
    # needed for them (a patient row is only the default of a new study).
    locked = {uid: study for uid, study in (locked_studies or {}).items() if study is not None}
    for item in items:
        p = item.parsed
        if p.study_instance_uid in locked:
            continue
        identity = _patient_identity(p)
        patient_key = tuple(identity.values())
        if patient_key not in patients:
            patients[patient_key] = _patient_get_or_create(clinic=clinic, identity=identity, parsed=p)
        if p.study_instance_uid not in studies:
            study, study_created = Study.objects.get_or_create(
                clinic=clinic,
                study_instance_uid=p.study_instance_uid,
                defaults={
                    "patient": patients[patient_key],
                    # The patient row's name (it may predate this file), as the study list shows it.
                    "patient_name": patients[patient_key].patient_name,
                    "study_id": p.study_id,
                    "study_date": p.study_date,
                    "study_time": p.study_time,
                    "accession_number": p.accession_number,
                    "study_description": p.study_description,
                    "referring_physician_name": p.referring_physician_name,
                },
            )
            studies[p.study_instance_uid] = study
            if study_created:
                created.append(study)
    # The study row locks serialise concurrent batches into one study, so counters and the modality
    # list are never computed from stale values; primary-key order keeps two batches from deadlocking.
    if studies:
        locked.update({
            s.study_instance_uid: s
            for s in Study.objects.for_clinic(clinic)
            .select_for_update()
            .filter(pk__in=[s.pk for s in studies.values()])
            .order_by("pk")
        })
    series_rows: dict[str, tuple[Series, bool]] = {}
    for item in items:
        p = item.parsed
        if p.series_instance_uid in series_rows:
            continue
        study = locked[p.study_instance_uid]
        series, series_created = _series_get_or_create(
            clinic=clinic,
            series_instance_uid=p.series_instance_uid,
            defaults={
                "study": study,
                "modality": p.modality,
                "series_number": p.series_number,
                "series_description": p.series_description,
                "body_part_examined": p.body_part_examined,
                "series_date": p.study_date,
                "series_time": p.study_time,
            },
        )
        if series.study_id != study.pk:
            raise InvalidDicom("The file's Series Instance UID already belongs to another study in this clinic.")
        # Callers read instance.series.study: hand them the locked row rather than a query each.
        series.study = study
        series_rows[p.series_instance_uid] = (series, series_created)
    instances = Instance.objects.bulk_create(
        [
            Instance(
                clinic=clinic,
                series=series_rows[i.parsed.series_instance_uid][0],
                sop_instance_uid=i.parsed.sop_instance_uid,
                sop_class_uid=i.parsed.sop_class_uid,
                instance_number=i.parsed.instance_number,
                transfer_syntax_uid=i.parsed.transfer_syntax_uid,
                number_of_frames=i.parsed.number_of_frames,
                rows=i.parsed.rows,
                columns=i.parsed.columns,
                size_bytes=i.stored.size_bytes,
                sha256=i.stored.sha256,
                object_key=i.stored.key,
                key_id=i.stored.key_id,
                metadata=_json_value(i.parsed.metadata, serialized=i.metadata_json),
                stored_at=now,
                replicated_at=i.replicated_at,
                replica_verified_at=i.verified_at,
                **({"uuid": i.instance_uuid} if i.instance_uuid is not None else {}),
            )
            for i in items
        ]
    )
    for instance, item in zip(instances, items, strict=True):
        # The dict, not the insert's expression (with metadata_json, what parsed carries: rebuilds read none).
        instance.metadata = item.parsed.metadata
    per_series: dict[str, int] = defaultdict(int)
    per_study: dict[str, list[IndexItem]] = defaultdict(list)
    for item in items:
        per_series[item.parsed.series_instance_uid] += 1
        per_study[item.parsed.study_instance_uid].append(item)
    for series_uid, count in per_series.items():
        series = series_rows[series_uid][0]
        prepared.update("ingest.series_count", _series_count_added, series_id=series.pk, count=count)
    for study_uid, study_items in per_study.items():
        study = locked[study_uid]
        new_series = {i.parsed.series_instance_uid for i in study_items if series_rows[i.parsed.series_instance_uid][1]}
        modalities, body_parts = study.modalities_in_study, study.body_part_examined
        for item in study_items:
            modalities = _add_value(modalities, item.parsed.modality, 128)
            body_parts = _add_value(body_parts, item.parsed.body_part_examined, 128)
        Study.objects.filter(pk=study.pk).update(
            number_of_instances=F("number_of_instances") + len(study_items),
            number_of_series=F("number_of_series") + len(new_series),
            size_bytes=F("size_bytes") + sum(i.stored.size_bytes for i in study_items),
            modalities_in_study=modalities,
            body_part_examined=body_parts,
            updated_at=now,
        )
    return IndexWrite(instances=instances, created_studies=created)


def instance_index_write(
    *,
    clinic: Clinic,
    parsed: dicom.ParsedInstance,
    stored: StoredObject,
    instance_uuid: uuid.UUID | None = None,
    replicated_at: datetime | None = None,
    verified_at: datetime | None = None,
) -> tuple[Instance, bool]:
    """Write the index rows for one stored object; return the instance and whether its study is new."""
    written = instances_index_write(
        clinic=clinic,
        items=[
            IndexItem(
                parsed=parsed,
                stored=stored,
                instance_uuid=instance_uuid,
                replicated_at=replicated_at,
                verified_at=verified_at,
            )
        ],
    )
    return written.instances[0], bool(written.created_studies)


def _json_value(document: dict[str, Any], *, serialized: str = "") -> Value | Cast:
    """The metadata column's value for a bulk insert, as an expression (``serialized``: JSON text as is).

    Django inserts a batch of plain values on PostgreSQL as UNNEST of one array per column; psycopg then
    quotes the jsonb[] array of DICOM JSON headers in Python, about 1.3 ms of CPU per 12 KB header. An
    expression keeps the insert a plain multi-row VALUES, whose JSON parameters libpq quotes (0.2 ms).
    """
    if serialized:
        return Cast(Value(serialized, output_field=TextField()), output_field=JSONField())
    return Value(document, output_field=JSONField())


def _add_value(joined: str, value: str, max_length: int) -> str:
    """Add ``value`` to a backslash-separated set, keeping it sorted and within ``max_length``."""
    values = {v for v in joined.split("\\") if v}
    if value and value not in values and "\\" not in value:
        candidate = "\\".join(sorted(values | {value}))
        if len(candidate) <= max_length:
            return candidate
    return joined

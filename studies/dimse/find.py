"""C-FIND over the clinic's index (PS3.4 Annex C): Patient Root and Study Root, every level.

Matching follows PS3.4 C.2.2.2: universal (empty value, or a lone ``*``), single value, wildcard (``*`` and ``?``),
range (DA and TM: ``A-B``, ``-B``, ``A-``) and list of UIDs (backslash-separated). Person names match
without regard to case. Indexed attributes are matched in the database; at IMAGE level any other
attribute is matched against, and answered from, the instance's stored DICOM JSON header (a sequence
is answered from it too, not matched).
Trashed studies (and their series and instances) are never matched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, time
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue

from studies import matching
from studies.models import Instance, Patient, Series, Study
from tenants.models import Clinic

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
# The level each indexed attribute lives at, and its model field there.
INDEXED: dict[str, tuple[str, str]] = {
    "PatientName": ("PATIENT", "patient_name"),
    "PatientID": ("PATIENT", "patient_id"),
    "IssuerOfPatientID": ("PATIENT", "issuer_of_patient_id"),
    "PatientBirthDate": ("PATIENT", "patient_birth_date"),
    "PatientSex": ("PATIENT", "patient_sex"),
    "StudyInstanceUID": ("STUDY", "study_instance_uid"),
    "StudyDate": ("STUDY", "study_date"),
    "StudyTime": ("STUDY", "study_time"),
    "AccessionNumber": ("STUDY", "accession_number"),
    "StudyID": ("STUDY", "study_id"),
    "StudyDescription": ("STUDY", "study_description"),
    "ReferringPhysicianName": ("STUDY", "referring_physician_name"),
    "ModalitiesInStudy": ("STUDY", "modalities_in_study"),
    "SeriesInstanceUID": ("SERIES", "series_instance_uid"),
    "Modality": ("SERIES", "modality"),
    "SeriesNumber": ("SERIES", "series_number"),
    "SeriesDescription": ("SERIES", "series_description"),
    "BodyPartExamined": ("SERIES", "body_part_examined"),
    "SeriesDate": ("SERIES", "series_date"),
    "SeriesTime": ("SERIES", "series_time"),
    "SOPInstanceUID": ("IMAGE", "sop_instance_uid"),
    "SOPClassUID": ("IMAGE", "sop_class_uid"),
    "InstanceNumber": ("IMAGE", "instance_number"),
    "Rows": ("IMAGE", "rows"),
    "Columns": ("IMAGE", "columns"),
    "NumberOfFrames": ("IMAGE", "number_of_frames"),
}
# Attributes kept as backslash-separated multi-values in one column.
MULTI_VALUED = {"ModalitiesInStudy"}
# Path from the model queried at one level to the model of another level.
PATHS: dict[str, dict[str, str]] = {
    "PATIENT": {"PATIENT": ""},
    "STUDY": {"PATIENT": "patient__", "STUDY": ""},
    "SERIES": {"PATIENT": "study__patient__", "STUDY": "study__", "SERIES": ""},
    "IMAGE": {"PATIENT": "series__study__patient__", "STUDY": "series__study__", "SERIES": "series__", "IMAGE": ""},
}
# Keys that are answered but never matched (PS3.4 C.3.4 optional return keys).
COUNTS = {
    "NumberOfPatientRelatedStudies": "PATIENT",
    "NumberOfPatientRelatedSeries": "PATIENT",
    "NumberOfPatientRelatedInstances": "PATIENT",
    "NumberOfStudyRelatedSeries": "STUDY",
    "NumberOfStudyRelatedInstances": "STUDY",
    "NumberOfSeriesRelatedInstances": "SERIES",
}
SKIPPED_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet"}
# File Meta elements (group 0002) describe a file, not the data set: some SCUs (Orthanc) put
# (0002,0003) in an identifier anyway; it is neither matched nor returned (PS3.4 C.4.1.1.3).
FILE_META_GROUP = 0x0002


class QueryError(Exception):
    """The identifier cannot be processed; ``status`` is the C-FIND failure status to answer.

    ``reason`` says why without quoting the identifier's values (the message may: patient data), for the
    audit trail.
    """

    def __init__(self, message: str, status: int = 0xC000, *, reason: str = "identifier refused") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Row:
    """One match and the index rows above it (absent above the query's level)."""

    patient: Patient
    study: Study | None = None
    series: Series | None = None
    instance: Instance | None = None


def query_level(identifier: Dataset, *, sop_class_uid: str) -> str:
    """Return the identifier's Query/Retrieve Level, checked against the information model."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryError(f"Unknown Query/Retrieve Level {level!r}.", status=0xA900,
                         reason="unknown Query/Retrieve Level")
    if level == "PATIENT" and sop_class_uid not in (PATIENT_ROOT_FIND, "1.2.840.10008.5.1.4.1.2.1.2",
                                                    "1.2.840.10008.5.1.4.1.2.1.3"):
        raise QueryError("The Study Root model has no PATIENT level.", status=0xA900,
                         reason="PATIENT level in the Study Root model")
    return level


def element_values(identifier: Dataset, keyword: str) -> list[str]:
    """Return a key's values as strings; an empty list means universal matching."""
    value = identifier[keyword].value
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(item) for item in value if str(item) != ""]
    return [str(value)] if str(value) != "" else []


def key_q(keyword: str, values: list[str], path: str) -> Q:
    """Return the filter matching one key (its DICOM VR picks the matching rule) on a model path."""
    vr = dictionary_VR(keyword)
    try:
        return matching.attribute_q(path, vr, values, name=keyword, multi_valued=keyword in MULTI_VALUED)
    except matching.MatchInvalid as exc:
        raise QueryError(exc.message, reason=f"invalid matching value for {keyword}") from exc


def _base_queryset(*, clinic: Clinic, level: str) -> QuerySet[Any]:
    """The level's live rows, each joined level named with its clinic (so its (clinic, ...) indexes serve)."""
    queryset = _level_queryset(clinic=clinic, level=level)
    for path in PATHS[level].values():
        if path:
            queryset = queryset.filter(**{path + "clinic": clinic})
    return queryset


def _level_queryset(*, clinic: Clinic, level: str) -> QuerySet[Any]:
    live = Q(deleted_at=None)
    if level == "PATIENT":
        return (
            Patient.objects.for_clinic(clinic)
            .annotate(
                live_studies=Count("studies", filter=Q(studies__deleted_at=None), distinct=True),
                live_series=Sum("studies__number_of_series", filter=Q(studies__deleted_at=None)),
                live_instances=Sum("studies__number_of_instances", filter=Q(studies__deleted_at=None)),
            )
            .filter(live_studies__gt=0)
            .order_by("pk")
        )
    if level == "STUDY":
        return Study.objects.for_clinic(clinic).filter(live).select_related("patient").order_by("pk")
    if level == "SERIES":
        return (
            Series.objects.for_clinic(clinic)
            .filter(study__deleted_at=None)
            .select_related("study__patient")
            .order_by("pk")
        )
    return (
        Instance.objects.for_clinic(clinic)
        .filter(series__study__deleted_at=None)
        .select_related("series__study__patient")
        .order_by("pk")
    )


def _metadata_values(instance: Instance, keyword: str) -> list[str]:
    tag = f"{tag_for_keyword(keyword):08X}"
    item = (instance.metadata or {}).get(tag) or {}
    values = item.get("Value") or []
    out = []
    for value in values:
        if isinstance(value, dict):  # PN in DICOM JSON: its groups as stored in the index
            groups = [str(value.get(g, "")) for g in ("Alphabetic", "Ideographic", "Phonetic")]
            out.append("=".join(groups).rstrip("="))
        elif not isinstance(value, list):
            out.append(str(value))
    return out


def _metadata_sequence(instance: Instance, keyword: str, requested: Any) -> list[Dataset]:
    """Return a sequence's items from the stored header, cut to the keys the request's item names.

    An empty request (no item, or an item without keys) asks for the items whole. A sequence the header
    lacks, or kept out of it (a BulkDataURI placeholder), is answered empty.
    """
    tag = f"{tag_for_keyword(keyword):08X}"
    stored = (instance.metadata or {}).get(tag) or {}
    if stored.get("vr") != "SQ" or not stored.get("Value"):
        return []
    try:
        items = list(Dataset.from_json({tag: stored})[tag].value)
    except (ValueError, TypeError, KeyError, AttributeError):  # a header value DICOM JSON reads back wrong
        return []
    keys = [element.tag for item in (requested or []) for element in item]
    if not keys:
        return items
    cut = []
    for item in items:
        answer = Dataset()
        for key in keys:
            if key in item:
                answer[key] = item[key]
            elif vr := _dictionary_vr(key):
                answer.add_new(key, vr, None)
        cut.append(answer)
    return cut


def _dictionary_vr(tag: Any) -> str:
    """Return the one VR the data dictionary gives ``tag``; "" for a private, unknown or ambiguous one."""
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return ""
    return "" if " or " in vr else vr


def _python_match(keyword: str, query_values: list[str], stored: list[str]) -> bool:
    """Match a non-indexed IMAGE-level key against the stored header values."""
    try:
        return matching.header_match(dictionary_VR(keyword), query_values, stored)
    except matching.MatchInvalid as exc:
        raise QueryError(exc.message, reason=f"invalid matching value for {keyword}") from exc


def _format(value: Any, vr: str) -> Any:
    if value is None:
        return None
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    if isinstance(value, time):
        return value.strftime("%H%M%S.%f") if value.microsecond else value.strftime("%H%M%S")
    if vr in ("IS",):
        return str(value)
    return value


def _row_for(level: str, obj: Any) -> Row:
    if level == "PATIENT":
        return Row(patient=obj)
    if level == "STUDY":
        return Row(patient=obj.patient, study=obj)
    if level == "SERIES":
        return Row(patient=obj.study.patient, study=obj.study, series=obj)
    return Row(patient=obj.series.study.patient, study=obj.series.study, series=obj.series, instance=obj)


def _count_value(keyword: str, row: Row) -> int | None:
    if keyword == "NumberOfPatientRelatedStudies":
        return getattr(row.patient, "live_studies", None) or Study.objects.for_clinic(row.patient.clinic_id).filter(
            patient=row.patient, deleted_at=None).count()
    if keyword in ("NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances"):
        field = "number_of_series" if keyword.endswith("Series") else "number_of_instances"
        annotated = "live_series" if keyword.endswith("Series") else "live_instances"
        if hasattr(row.patient, annotated):
            return getattr(row.patient, annotated) or 0
        total = Study.objects.for_clinic(row.patient.clinic_id).filter(
            patient=row.patient, deleted_at=None).aggregate(total=Sum(field))["total"]
        return total or 0
    if keyword == "NumberOfStudyRelatedSeries" and row.study is not None:
        return row.study.number_of_series
    if keyword == "NumberOfStudyRelatedInstances" and row.study is not None:
        return row.study.number_of_instances
    if keyword == "NumberOfSeriesRelatedInstances" and row.series is not None:
        return row.series.number_of_instances
    return None


def _answer(identifier: Dataset, *, level: str, row: Row, clinic: Clinic) -> Dataset:
    """Build one response identifier holding every requested key, filled where we know it."""
    answer = Dataset()
    answer.SpecificCharacterSet = "ISO_IR 192"
    answer.QueryRetrieveLevel = level
    level_index = LEVELS.index(level)
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in SKIPPED_KEYS or element.tag.group == FILE_META_GROUP:
            continue
        vr = element.VR
        value: Any = None
        if keyword in INDEXED:
            attr_level, field = INDEXED[keyword]
            if LEVELS.index(attr_level) <= level_index:
                source = {"PATIENT": row.patient, "STUDY": row.study, "SERIES": row.series,
                          "IMAGE": row.instance}[attr_level]
                value = _format(getattr(source, field), vr) if source is not None else None
                if keyword in MULTI_VALUED and value:
                    value = value.split("\\")
        elif keyword in COUNTS:
            count = _count_value(keyword, row)
            value = str(count) if count is not None else None
        elif keyword == "RetrieveAETitle":
            value = clinic.ae_title
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        elif level == "IMAGE" and row.instance is not None and vr != "SQ":
            stored = _metadata_values(row.instance, keyword)
            value = stored if len(stored) > 1 else (stored[0] if stored else None)
        if vr == "SQ":
            # At IMAGE level a sequence comes from the stored header like any other attribute.
            stored_items = (
                _metadata_sequence(row.instance, keyword, element.value)
                if level == "IMAGE" and row.instance is not None and keyword not in INDEXED
                else []
            )
            setattr(answer, keyword, stored_items)
            continue
        if value in (None, ""):
            answer.add_new(element.tag, vr, None)
        else:
            answer.add_new(element.tag, vr, value)
    return answer


def find_matches(*, clinic: Clinic, identifier: Dataset, sop_class_uid: str) -> Iterator[Dataset]:
    """Yield one response identifier per match of a C-FIND request, scoped to the clinic.

    Raises QueryError (with the failure status to answer) when the identifier is unusable.
    """
    level = query_level(identifier, sop_class_uid=sop_class_uid)
    level_index = LEVELS.index(level)
    queryset = _base_queryset(clinic=clinic, level=level)
    python_keys: list[tuple[str, list[str]]] = []
    patient_q = Q()
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in SKIPPED_KEYS or keyword in COUNTS or element.VR == "SQ":
            continue
        if element.tag.group == FILE_META_GROUP:
            continue
        values = element_values(identifier, keyword)
        if not values:
            continue
        if keyword in INDEXED:
            attr_level, field = INDEXED[keyword]
            if LEVELS.index(attr_level) > level_index:
                # PS3.4 C.4.1.1.3.1: keys below the query level are not allowed.
                raise QueryError(f"{keyword} is not a key at the {level} level.", status=0xA900,
                                 reason=f"{keyword} is not a key at the {level} level")
            if keyword == "PatientName" and level != "PATIENT":
                # The study's copy of the name: the search stays on the study table and its indexes.
                queryset = queryset.filter(key_q(keyword, values, PATHS[level]["STUDY"] + field))
            elif attr_level == "PATIENT" and level != "PATIENT":
                patient_q &= key_q(keyword, values, field)
            else:
                queryset = queryset.filter(key_q(keyword, values, PATHS[level][attr_level] + field))
        elif level == "IMAGE":
            python_keys.append((keyword, values))
        # Other keys we do not index at this level are answered empty and not matched.
    try:
        with matching.search_budget():
            if patient_q:
                queryset = matching.patients_narrow(
                    queryset, clinic=clinic, patient_q=patient_q, path=PATHS[level]["PATIENT"]
                )
            for obj in queryset.iterator(chunk_size=500):
                row = _row_for(level, obj)
                if python_keys and not all(
                    _python_match(keyword, values, _metadata_values(obj, keyword)) for keyword, values in python_keys
                ):
                    continue
                yield _answer(identifier, level=level, row=row, clinic=clinic)
    except matching.SearchTooSlow as exc:
        raise QueryError(exc.message, status=0xA700, reason="search took too long") from exc

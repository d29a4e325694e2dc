"""C-FIND over the clinic's index (PS3.4 Annex C): Patient Root and Study Root, every level.

Matching follows PS3.4 C.2.2.2: universal (empty value), single value, wildcard (``*`` and ``?``),
range (DA and TM: ``A-B``, ``-B``, ``A-``) and list of UIDs (backslash-separated). Person names match
without regard to case. Indexed attributes are matched in the database; at IMAGE level any other
attribute is matched against, and answered from, the instance's stored DICOM JSON header.
Trashed studies (and their series and instances) are never matched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, time
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue

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
    """The identifier cannot be processed; ``status`` is the C-FIND failure status to answer."""

    def __init__(self, message: str, status: int = 0xC000) -> None:
        super().__init__(message)
        self.status = status


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
        raise QueryError(f"Unknown Query/Retrieve Level {level!r}.", status=0xA900)
    if level == "PATIENT" and sop_class_uid not in (PATIENT_ROOT_FIND, "1.2.840.10008.5.1.4.1.2.1.2",
                                                    "1.2.840.10008.5.1.4.1.2.1.3"):
        raise QueryError("The Study Root model has no PATIENT level.", status=0xA900)
    return level


def element_values(identifier: Dataset, keyword: str) -> list[str]:
    """Return a key's values as strings; an empty list means universal matching."""
    value = identifier[keyword].value
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(item) for item in value if str(item) != ""]
    return [str(value)] if str(value) != "" else []


def _wildcard_regex(pattern: str) -> str:
    parts = []
    for char in pattern:
        parts.append(".*" if char == "*" else "." if char == "?" else re.escape(char))
    return "".join(parts)


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _parse_date(value: str) -> date:
    value = value.strip().replace(".", "")  # ACR-NEMA style YYYY.MM.DD still appears
    try:
        return date(int(value[0:4]), int(value[4:6]), int(value[6:8]))
    except (ValueError, IndexError) as exc:
        raise QueryError(f"{value!r} is not a DICOM date (YYYYMMDD).") from exc


def _parse_time(value: str, *, end: bool = False) -> time:
    """Parse TM; a partial time is the start (or, for a range's end, the end) of its span."""
    value = value.strip().replace(":", "")
    digits, _, fraction = value.partition(".")
    if not digits.isdigit() or len(digits) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        raise QueryError(f"{value!r} is not a DICOM time (HHMMSS.FFFFFF).")
    hour = int(digits[0:2])
    minute = int(digits[2:4]) if len(digits) >= 4 else (59 if end else 0)
    second = int(digits[4:6]) if len(digits) >= 6 else (59 if end else 0)
    micro = int((fraction + "000000")[:6]) if fraction else (999999 if end else 0)
    try:
        return time(hour, minute, second, micro)
    except ValueError as exc:
        raise QueryError(f"{value!r} is not a DICOM time.") from exc


def _range(value: str) -> tuple[str, str] | None:
    if "-" not in value:
        return None
    low, _, high = value.partition("-")
    return low.strip(), high.strip()


def _date_q(path: str, value: str) -> Q:
    bounds = _range(value)
    if bounds is None:
        return Q(**{path: _parse_date(value)})
    low, high = bounds
    q = Q()
    if low:
        q &= Q(**{f"{path}__gte": _parse_date(low)})
    if high:
        q &= Q(**{f"{path}__lte": _parse_date(high)})
    return q


def _time_q(path: str, value: str) -> Q:
    bounds = _range(value)
    if bounds is None:
        return Q(**{f"{path}__gte": _parse_time(value), f"{path}__lte": _parse_time(value, end=True)})
    low, high = bounds
    q = Q()
    if low:
        q &= Q(**{f"{path}__gte": _parse_time(low)})
    if high:
        q &= Q(**{f"{path}__lte": _parse_time(high, end=True)})
    return q


def _string_q(path: str, value: str, *, vr: str, multi_valued: bool) -> Q:
    ignore_case = vr == "PN"
    if multi_valued:
        # Stored as "CT\MR": the key matches when any stored value matches.
        regex = r"(^|\\)" + _wildcard_regex(value) + r"(\\|$)"
        return Q(**{f"{path}__{'iregex' if ignore_case else 'regex'}": regex})
    if _has_wildcard(value):
        return Q(**{f"{path}__{'iregex' if ignore_case else 'regex'}": "^" + _wildcard_regex(value) + "$"})
    return Q(**{f"{path}__{'iexact' if ignore_case else 'exact'}": value})


def key_q(keyword: str, values: list[str], path: str) -> Q:
    """Return the filter matching one key (its DICOM VR picks the matching rule) on a model path."""
    vr = dictionary_VR(tag_for_keyword(keyword))
    if vr == "UI":
        return Q(**{f"{path}__in": values})
    if vr in ("IS", "US", "SS", "UL", "SL"):
        try:
            return Q(**{f"{path}__in": [int(v) for v in values]})
        except ValueError as exc:
            raise QueryError(f"{keyword} must be a number.") from exc
    # Any other key with several values means "any of them" (PS3.4 C.2.2.2.1 value lists).
    q = Q()
    for value in values:
        if vr == "DA":
            q |= _date_q(path, value)
        elif vr == "TM":
            q |= _time_q(path, value)
        else:
            q |= _string_q(path, value, vr=vr, multi_valued=keyword in MULTI_VALUED)
    return q


def _base_queryset(*, clinic: Clinic, level: str) -> QuerySet[Any]:
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
        if isinstance(value, dict):  # PN in DICOM JSON
            out.append(str(value.get("Alphabetic", "")))
        elif not isinstance(value, list):
            out.append(str(value))
    return out


def _python_match(keyword: str, query_values: list[str], stored: list[str]) -> bool:
    """Match a non-indexed IMAGE-level key against the stored header values."""
    vr = dictionary_VR(tag_for_keyword(keyword))
    if vr == "SQ":
        return True  # sequence matching is not supported: treated as universal
    for query in query_values:
        for value in stored:
            if vr == "UI" and value == query:
                return True
            if vr in ("DA", "TM", "DT") and "-" in query:
                low, _, high = query.partition("-")
                if (not low or value >= low) and (not high or value[: len(high)] <= high):
                    return True
            flags = re.IGNORECASE if vr == "PN" else 0
            if re.fullmatch(_wildcard_regex(query), value, flags):
                return True
    return False


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
            setattr(answer, keyword, [])
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
                raise QueryError(f"{keyword} is not a key at the {level} level.", status=0xA900)
            queryset = queryset.filter(key_q(keyword, values, PATHS[level][attr_level] + field))
        elif level == "IMAGE":
            python_keys.append((keyword, values))
        # Other keys we do not index at this level are answered empty and not matched.
    for obj in queryset.iterator(chunk_size=500):
        row = _row_for(level, obj)
        if python_keys and not all(
            _python_match(keyword, values, _metadata_values(obj, keyword)) for keyword, values in python_keys
        ):
            continue
        yield _answer(identifier, level=level, row=row, clinic=clinic)

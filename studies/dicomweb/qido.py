"""QIDO-RS (PS3.18 10.6): matching keys, query building and DICOM JSON answers over the index.

Searches run on the index rows only (no object reads). Every query starts from
``Model.objects.for_clinic(clinic)`` and leaves out studies in the trash.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F, Q, QuerySet
from django.db.models.expressions import OrderBy

from portal import prepared
from studies import matching
from studies.dicomweb import rendering
from studies.dicomweb.dicomjson import renderer
from studies.models import Instance, Series, Study
from tenants.models import Clinic

STUDY, SERIES, INSTANCE = "study", "series", "instance"
# Where each entity sits relative to the model being searched.
PATHS: dict[str, dict[str, str]] = {
    STUDY: {"patient": "patient__", "study": ""},
    SERIES: {"patient": "study__patient__", "study": "study__", "series": ""},
    INSTANCE: {"patient": "series__study__patient__", "study": "series__study__", "series": "series__", "instance": ""},
}
# Without a limit, answer a page and say (Warning header) that more results remain.
DEFAULT_LIMIT = 100
MAX_LIMIT = 5000


# Bad matching values and bad control parameters alike answer 400 with a JSON message.
QueryInvalid = matching.MatchInvalid


@dataclass(frozen=True)
class Attribute:
    tag: str
    keyword: str
    vr: str
    entity: str  # patient, study, series, instance
    field: str  # index field on that entity
    kind: str  # how it matches: text, person, date, time, uid, int, codes (a backslash list)
    multi_valued: bool = False


ATTRIBUTES: tuple[Attribute, ...] = (
    # Matched and answered from the study's copy of the name: a name search stays on the study table.
    Attribute("00100010", "PatientName", "PN", "study", "patient_name", "person"),
    Attribute("00100020", "PatientID", "LO", "patient", "patient_id", "text"),
    Attribute("00100021", "IssuerOfPatientID", "LO", "patient", "issuer_of_patient_id", "text"),
    Attribute("00100030", "PatientBirthDate", "DA", "patient", "patient_birth_date", "date"),
    Attribute("00100040", "PatientSex", "CS", "patient", "patient_sex", "text"),
    Attribute("0020000D", "StudyInstanceUID", "UI", "study", "study_instance_uid", "uid"),
    Attribute("00080020", "StudyDate", "DA", "study", "study_date", "date"),
    Attribute("00080030", "StudyTime", "TM", "study", "study_time", "time"),
    Attribute("00080050", "AccessionNumber", "SH", "study", "accession_number", "text"),
    Attribute("00080061", "ModalitiesInStudy", "CS", "study", "modalities_in_study", "codes", True),
    Attribute("00080090", "ReferringPhysicianName", "PN", "study", "referring_physician_name", "person"),
    Attribute("00081030", "StudyDescription", "LO", "study", "study_description", "text"),
    Attribute("00200010", "StudyID", "SH", "study", "study_id", "text"),
    Attribute("00201206", "NumberOfStudyRelatedSeries", "IS", "study", "number_of_series", "int"),
    Attribute("00201208", "NumberOfStudyRelatedInstances", "IS", "study", "number_of_instances", "int"),
    Attribute("0020000E", "SeriesInstanceUID", "UI", "series", "series_instance_uid", "uid"),
    Attribute("00080060", "Modality", "CS", "series", "modality", "text"),
    Attribute("00200011", "SeriesNumber", "IS", "series", "series_number", "int"),
    Attribute("0008103E", "SeriesDescription", "LO", "series", "series_description", "text"),
    Attribute("00180015", "BodyPartExamined", "CS", "series", "body_part_examined", "text"),
    Attribute("00080021", "SeriesDate", "DA", "series", "series_date", "date"),
    Attribute("00080031", "SeriesTime", "TM", "series", "series_time", "time"),
    Attribute("00201209", "NumberOfSeriesRelatedInstances", "IS", "series", "number_of_instances", "int"),
    Attribute("00080018", "SOPInstanceUID", "UI", "instance", "sop_instance_uid", "uid"),
    Attribute("00080016", "SOPClassUID", "UI", "instance", "sop_class_uid", "uid"),
    Attribute("00200013", "InstanceNumber", "IS", "instance", "instance_number", "int"),
    Attribute("00280010", "Rows", "US", "instance", "rows", "int"),
    Attribute("00280011", "Columns", "US", "instance", "columns", "int"),
    Attribute("00280008", "NumberOfFrames", "IS", "instance", "number_of_frames", "int"),
    Attribute("00020010", "TransferSyntaxUID", "UI", "instance", "transfer_syntax_uid", "uid"),
)
BY_NAME: dict[str, Attribute] = {a.keyword.lower(): a for a in ATTRIBUTES} | {a.tag.lower(): a for a in ATTRIBUTES}

# PS3.18 Tables 10.6.3-3/4/5: what every answer carries at each level (plus a few viewers rely on).
DEFAULT_RETURN: dict[str, tuple[str, ...]] = {
    STUDY: (
        "StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
        "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ),
    SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances"),
    INSTANCE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames"),
}
# Instance attributes read from the stored header when asked for (not in the index).
INSTANCE_HEADER_DEFAULTS = ("00280100",)  # BitsAllocated
CONTROL_PARAMS = {"limit", "offset", "includefield", "fuzzymatching", "accept", "charset"}


@dataclass
class Query:
    level: str
    filters: Q
    include: list[Attribute]
    include_tags: list[str]  # header tags (instance level) asked for by includefield
    include_all: bool
    limit: int
    offset: int
    warnings: list[str]
    patient_filters: Q = field(default_factory=Q)  # keys on the patient, matched first (patients_narrow)
    name_filters: Q = field(default_factory=Q)  # PatientName on the study's copy (matching.rows_narrow)


def _matching_q(attribute: Attribute, path: str, value: str) -> Q:
    return matching.attribute_q(
        path, attribute.vr, [value], name=attribute.keyword, multi_valued=attribute.multi_valued
    )


def query_parse(*, level: str, params: Any) -> Query:
    """Turn QIDO-RS query parameters (a QueryDict) into a ``Query``; raise QueryInvalid on bad values."""
    paths = PATHS[level]
    filters = Q()
    patient_filters = Q()
    name_filters = Q()
    warnings: list[str] = []
    include: list[Attribute] = []
    include_tags: list[str] = []
    include_all = False
    for name, values in params.lists():
        lowered = name.lower()
        if lowered in CONTROL_PARAMS:
            continue
        attribute = BY_NAME.get(lowered)
        if attribute is None or attribute.entity not in paths:
            warnings.append(f"299 dicomweb: The matching key {name!r} is not supported at this level and was ignored.")
            continue
        path = paths[attribute.entity] + attribute.field
        for value in values:
            if value == "":
                continue  # Universal matching: return the attribute, filter nothing.
            if attribute.entity == "patient":
                patient_filters &= _matching_q(attribute, attribute.field, value)
            elif attribute.keyword == "PatientName":
                name_filters &= _matching_q(attribute, path, value)
            else:
                filters &= _matching_q(attribute, path, value)
        if attribute not in include:
            include.append(attribute)
    for raw in params.getlist("includefield"):
        for item in matching.split_list(raw):
            if item.lower() == "all":
                include_all = True
                continue
            attribute = BY_NAME.get(item.lower())
            if attribute is not None and attribute.entity in paths:
                include.append(attribute)
            elif re.fullmatch(r"[0-9A-Fa-f]{8}", item) and level == INSTANCE:
                include_tags.append(item.upper())
            elif level == INSTANCE and attribute is None:
                tag = rendering.keyword_tag(item)
                if tag is not None:
                    include_tags.append(tag)
    if params.get("fuzzymatching", "").lower() == "true":
        warnings.append("299 dicomweb: fuzzymatching is not supported; only literal and wildcard matching were used.")
    limit = matching.int_value(params.get("limit", DEFAULT_LIMIT), name="limit", low=0)
    offset = matching.int_value(params.get("offset", 0), name="offset", low=0)
    if limit > MAX_LIMIT:
        warnings.append(f"299 dicomweb: limit was lowered to {MAX_LIMIT}.")
        limit = MAX_LIMIT
    return Query(
        level, filters, include, include_tags, include_all, limit, offset, warnings, patient_filters, name_filters
    )


def _return_attributes(query: Query, *, with_parents: Iterable[str]) -> list[Attribute]:
    """The attributes an answer carries: the level's defaults, its parents' when not fixed by the path."""
    entities = set(PATHS[query.level])
    keywords: list[str] = list(DEFAULT_RETURN[query.level])
    for parent in with_parents:
        keywords += DEFAULT_RETURN[parent]
    chosen = [BY_NAME[k.lower()] for k in keywords]
    if query.include_all:
        chosen += [a for a in ATTRIBUTES if a.entity in entities]
    chosen += query.include
    unique: dict[str, Attribute] = {}
    for attribute in chosen:
        if attribute.entity in entities:
            unique.setdefault(attribute.tag, attribute)
    if query.level == INSTANCE:
        # The instance's own TransferSyntaxUID is a file-meta value; answer it only when asked.
        if not (query.include_all or any(a.keyword == "TransferSyntaxUID" for a in query.include)):
            unique.pop("00020010", None)
    return list(unique.values())


def _rows_queryset(
    *,
    clinic: Clinic | int,
    query: Query,
    study_uid: str | None,
    series_uid: str | None,
    study_ids: set[int] | None,
    columns: tuple[str, ...],
) -> QuerySet:
    """The ``values()`` of the page of rows a search answers, in the order it answers them."""
    queryset: QuerySet
    order: tuple[OrderBy | str, ...]
    paths = PATHS[query.level]
    # Every condition goes into one filter() call: each call clones the query, which is most of the
    # Python time of a small search (a series-of-study query is a few milliseconds in all).
    conditions: dict[str, Any] = {paths["study"] + "deleted_at": None}
    if query.level == STUDY:
        queryset = Study.objects.for_clinic(clinic)
        # Newest first, spelled as the live-study date indexes are (so a page stops after its rows).
        order = (F("study_date").desc(nulls_last=True), F("study_time").desc(nulls_last=True), "-id")
    elif query.level == SERIES:
        queryset = Series.objects.for_clinic(clinic)
        order = ("study_id", "series_number", "id")
    else:
        queryset = Instance.objects.for_clinic(clinic)
        order = ("series_id", "instance_number", "id")
    # Naming each level's clinic lets PostgreSQL use the (clinic, ...) indexes of the tables joined. Not
    # the patient's: patient keys are matched first (patients_narrow), and a filter on the joined
    # patients' clinic made the planner hash-join every patient of the clinic (issue 19).
    for entity in paths:
        if paths[entity] and entity != "patient":
            conditions[paths[entity] + "clinic"] = clinic
    if study_ids is not None:
        conditions[paths["study"] + "id__in"] = study_ids
    if study_uid is not None:
        conditions[paths["study"] + "study_instance_uid"] = study_uid
    if series_uid is not None:
        conditions[paths["series"] + "series_instance_uid"] = series_uid
    queryset = queryset.filter(query.filters, **conditions)
    if query.patient_filters:
        queryset = matching.patients_narrow(
            queryset, clinic=clinic, patient_q=query.patient_filters, path=paths["patient"]
        )
    queryset = matching.rows_narrow(queryset, query.name_filters)
    if study_uid is not None and not (query.patient_filters or query.name_filters):
        # Inside one study the matches are its few series or instances, and no patient is joined: one
        # statement, sorted and cut at once (the two-step form below costs PostgreSQL twice the planning).
        return queryset.order_by(*order).values(*columns)[query.offset : query.offset + query.limit + 1]
    # The page's ids first, then its rows with their parents: joined in the search itself, PostgreSQL
    # joined the patient of every match before sorting (15,000 buffers for the 5,000 of '*SON^?ARY').
    page = queryset.order_by(*order).values("id")[query.offset : query.offset + query.limit + 1]
    return queryset.model.objects.for_clinic(clinic).filter(id__in=page).order_by(*order).values(*columns)


def search(
    *,
    clinic: Clinic,
    query: Query,
    study_uid: str | None = None,
    series_uid: str | None = None,
    base_url: str,
    study_ids: set[int] | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Run a QIDO-RS search; return the DICOM JSON results and whether more results remain.

    ``study_ids`` narrows the search to those studies (a share link's scope).
    """
    parents: list[str] = []
    paths = PATHS[query.level]
    if query.level == SERIES and study_uid is None:
        parents = [STUDY]
    elif query.level == INSTANCE and series_uid is None:
        parents = [SERIES] + ([STUDY] if study_uid is None else [])
    attributes = _return_attributes(query, with_parents=parents)
    fields = {paths[a.entity] + a.field for a in attributes}
    fields |= {paths["study"] + "study_instance_uid"}
    if query.level in (SERIES, INSTANCE):
        fields.add(paths["series"] + "series_instance_uid")
    if query.level == INSTANCE:
        fields.add("sop_instance_uid")
        fields.add("metadata")
    columns = tuple(sorted(fields))
    if study_uid is not None and study_ids is None and not (query.filters or query.patient_filters or query.name_filters):
        # Walking one study (OHIF's series and instances lists): no matching keys, so the statement's
        # shape is fixed by the level, the columns and the page; compiled once, run with the UIDs.
        values: dict[str, int | str] = {"clinic_id": clinic.pk, "study_uid": study_uid}
        if series_uid is not None:
            values["series_uid"] = series_uid

        def build(*, clinic_id: int, study_uid: str, series_uid: str | None = None) -> QuerySet:
            return _rows_queryset(clinic=clinic_id, query=query, study_uid=study_uid, series_uid=series_uid,
                                  study_ids=None, columns=columns)

        key = ("qido.search", query.level, columns, query.offset, query.limit)
        rows = prepared.rows(key, build, **values)
    else:
        rows = list(_rows_queryset(clinic=clinic, query=query, study_uid=study_uid, series_uid=series_uid,
                                   study_ids=study_ids, columns=columns))
    has_more = len(rows) > query.limit
    rows = rows[: query.limit]
    modalities_key = paths["study"] + "modalities_in_study"
    if any(a.keyword == "ModalitiesInStudy" for a in attributes):
        _modalities_fill(clinic, rows, uid_key=paths["study"] + "study_instance_uid", key=modalities_key)
    results = []
    header_tags = list(INSTANCE_HEADER_DEFAULTS) + query.include_tags
    # Each attribute's column and renderer found once per search, not once per row.
    columns_rendered = [
        (a.tag, paths[a.entity] + a.field, renderer(a.vr, multi_valued=a.multi_valued),
         a.keyword == "ModalitiesInStudy")
        for a in attributes
    ]
    for row in rows:
        result: dict[str, Any] = {}
        for tag, column, render, left_out_when_empty in columns_rendered:
            value = row[column]
            if left_out_when_empty and not value:
                # OHIF's study list fails on a CS element without a Value: leave it out.
                continue
            result[tag] = render(value)
        result["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
        result["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}
        study = row[paths["study"] + "study_instance_uid"]
        url = f"{base_url}studies/{study}"
        if query.level in (SERIES, INSTANCE):
            url += f"/series/{row[paths['series'] + 'series_instance_uid']}"
        if query.level == INSTANCE:
            url += f"/instances/{row['sop_instance_uid']}"
            header = row["metadata"] or {}
            tags = header_tags if not query.include_all else [t for t in header if t not in result]
            for tag in tags:
                if tag in header and tag not in result:
                    value = header[tag]
                    if "BulkDataURI" in value:
                        # The stored header names bulk data by tag path; answer a real URL.
                        value = {**value, "BulkDataURI": f"{url}/bulkdata/{value['BulkDataURI']}"}
                    result[tag] = value
        result["00081190"] = {"vr": "UR", "Value": [url]}
        results.append(dict(sorted(result.items())))
    return results, has_more


def _modalities_fill(clinic: Clinic, rows: list[dict[str, Any]], *, uid_key: str, key: str) -> None:
    """Fill an empty ModalitiesInStudy from the modalities of the series we hold (one query)."""
    missing = {row[uid_key] for row in rows if not row[key]}
    if not missing:
        return
    found: dict[str, list[str]] = {}
    pairs = (
        Series.objects.for_clinic(clinic)
        .filter(study__study_instance_uid__in=missing)
        .exclude(modality="")
        .values_list("study__study_instance_uid", "modality")
        .order_by("modality")
        .distinct()
    )
    for uid, modality in pairs:
        found.setdefault(uid, []).append(modality)
    for row in rows:
        if not row[key] and row[uid_key] in found:
            row[key] = "\\".join(found[row[uid_key]])


def series_exists(*, clinic: Clinic, study_uid: str, series_uid: str) -> bool:
    """Say whether the clinic has this series in this study (and the study is not in the trash)."""
    return (
        Series.objects.for_clinic(clinic)
        .filter(study__study_instance_uid=study_uid, study__deleted_at=None, series_instance_uid=series_uid,
                study__clinic=clinic)
        .exists()
    )

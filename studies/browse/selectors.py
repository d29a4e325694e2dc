"""Reads of the clinic's study index for the studies pages, the study page, downloads and the REST API.

Every function takes the clinic as a keyword argument and starts from ``for_clinic``. Trashed studies
(``deleted_at`` set) are left out of every read except the trash itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from uuid import UUID

from django.conf import settings
from django.db import connection
from django.db.models import CharField, F, Func, QuerySet

from studies import matching
from studies.dicom import is_valid_uid
from studies.models import Instance, Patient, Series, Study
from tenants.models import Clinic

# Family name before given names: "DOE^JANE" sorts before "DOERR^ANNA" (a space sorts before letters).
# Over the study's copy of the name; the literals are part of the SQL, not parameters, so that SQLite
# matches it to its expression index (study_name_sort_sqlite; PostgreSQL's is study_name_sort).
_NAME_SORT = Func(F("patient_name"), template="UPPER(REPLACE(%(expressions)s, '^', ' '))", output_field=CharField())

# The public sort keys (page and API) and the columns behind them; ties broken by id so that pages
# never repeat or skip a row.
SORTS: dict[str, tuple] = {
    "date": (F("study_date").asc(nulls_first=True), F("study_time").asc(nulls_first=True), "id"),
    "-date": (F("study_date").desc(nulls_last=True), F("study_time").desc(nulls_last=True), "-id"),
    "patient": (_NAME_SORT, "id"),
    "-patient": (_NAME_SORT.desc(), "-id"),
    "created": ("created_at", "id"),
    "-created": ("-created_at", "-id"),
}
DEFAULT_SORT = "-date"


@dataclass(frozen=True)
class StudySearch:
    """The search keys shared by the studies page and ``GET /api/v1/clinics/<clinic>/studies/``.

    Text keys accept the DICOM wildcards ``*`` (any run of characters) and ``?`` (one character).
    ``patient_name`` is case-insensitive; without wildcards it matches a family or given name that
    starts with the text (``smi`` finds ``SMITH^JOHN``, so does ``john``), and the forms the list shows
    (``Smith, John``, ``John Smith``). ``patient_id`` and ``accession_number`` without wildcards match
    exactly; ``modality`` is one of the study's modalities; ``description`` matches anywhere,
    case-insensitively. The rules are those of ``studies.matching``, shared with QIDO-RS and C-FIND.
    """

    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    date_from: date | None = None
    date_to: date | None = None
    modality: str = ""
    description: str = ""
    sort: str = DEFAULT_SORT

    @property
    def is_empty(self) -> bool:
        return not any(
            [self.patient_name, self.patient_id, self.accession_number, self.date_from, self.date_to,
             self.modality, self.description]
        )


def study_list(*, clinic: Clinic | int, search: StudySearch | None = None) -> QuerySet[Study]:
    """Return the clinic's studies (not in the trash) matching the search, sorted, with their patient.

    A patient-name search looks its matches up right away (one query, ``matching.rows_match``); the rest
    is lazy.
    """
    return study_matches(clinic=clinic, search=search)[0]


def study_matches(*, clinic: Clinic | int, search: StudySearch | None = None) -> tuple[QuerySet[Study], int | None]:
    """``study_list``, and how many studies match when the name lookup already counted them.

    The count is exact up to ``matching.PATIENT_IDS_MAX``, and ``PATIENT_IDS_MAX`` + 1 means more; None
    when the search has no name (count with ``study_count``).
    """
    search = search or StudySearch()
    matching.date_bounds(search.date_from, search.date_to)
    # The page's patients are fetched by id after the page is cut (one query for its 25 rows); joined in
    # the search itself, PostgreSQL fetched the patient of every match before sorting (15,000 buffers
    # for 5,000 matches of '*SON^?ARY').
    studies: QuerySet[Study] = Study.objects.for_clinic(clinic).filter(deleted_at__isnull=True).prefetch_related(
        "patient"
    )
    if search.patient_id.strip():
        # Naming the patient's clinic too lets PostgreSQL use the (clinic_id, ...) patient indexes.
        studies = studies.filter(patient__clinic=clinic)
    studies = studies.filter(
        matching.text_q("patient__patient_id", search.patient_id.strip()),
        matching.text_q("accession_number", search.accession_number.strip()),
        matching.codes_q("modalities_in_study", search.modality.strip().upper()),
        matching.contains_q("study_description", search.description),
    )
    if search.date_from:
        studies = studies.filter(study_date__gte=search.date_from)
    if search.date_to:
        studies = studies.filter(study_date__lte=search.date_to)
    matched = None
    if search.patient_name.strip():
        # The study's copy of the name: the search stays on this table and its (live study) indexes. Last,
        # so that the matches it counts are those of the whole search.
        studies, matched = matching.rows_match(
            studies.alias(given_name_upper=matching.given_name_upper("patient_name")),
            matching.name_words_q("patient_name", search.patient_name, given_name="given_name_upper"),
        )
    return studies.order_by(*SORTS.get(search.sort, SORTS[DEFAULT_SORT])), matched


def study_count(queryset: QuerySet[Study], *, cap: int | None = None, matched: int | None = None) -> int:
    """Count a search's matches, stopping at ``cap + 1`` so that a broad search stays fast.

    A result of ``cap + 1`` means "more than cap"; the studies page says so instead of counting
    100,000 rows for every page load. ``matched`` is ``study_matches``' count, which spares the query
    when it answers (reading the same matches twice cost 10-60 ms at 1,000,000 studies).
    """
    if cap is not None and matched is not None:
        if matched <= matching.PATIENT_IDS_MAX:
            return min(matched, cap + 1)
        if cap <= matching.PATIENT_IDS_MAX:
            return cap + 1
    if cap is None:
        return queryset.count()
    # Which rows make up the first cap + 1 does not matter for the count, so drop the (costly) order.
    return queryset.order_by()[: cap + 1].count()


def study_get(*, clinic: Clinic | int, study_uuid: UUID | str) -> Study | None:
    """Return one study (not trashed) by its public uuid, with its patient, or None."""
    return (
        Study.objects.for_clinic(clinic)
        .filter(uuid=study_uuid, deleted_at__isnull=True)
        .select_related("patient")
        .first()
    )


def study_get_by_uid(*, clinic: Clinic | int, study_instance_uid: str) -> Study | None:
    """Return one study (not trashed) by its Study Instance UID (REST API), or None."""
    # A malformed UID names no study; a NUL byte in it would even be refused by PostgreSQL.
    if not is_valid_uid(study_instance_uid):
        return None
    return (
        Study.objects.for_clinic(clinic)
        .filter(study_instance_uid=study_instance_uid, deleted_at__isnull=True)
        .select_related("patient")
        .first()
    )


def series_list(*, clinic: Clinic | int, study: Study) -> QuerySet[Series]:
    """Return a study's series in series-number order."""
    return (
        Series.objects.for_clinic(clinic)
        .filter(study=study)
        .order_by(F("series_number").asc(nulls_last=True), "created_at", "id")
    )


def series_get(*, clinic: Clinic | int, study: Study, series_uuid: UUID | str) -> Series | None:
    return Series.objects.for_clinic(clinic).filter(study=study, uuid=series_uuid).first()


def instance_list(
    *, clinic: Clinic | int, study: Study | None = None, series: Series | None = None
) -> QuerySet[Instance]:
    """Return the instances of a study or of one series, in series then instance-number order."""
    # The header copy (metadata) can be large and no download or listing needs it.
    instances = Instance.objects.for_clinic(clinic).select_related("series").defer("metadata")
    if series is not None:
        instances = instances.filter(series=series)
    elif study is not None:
        instances = instances.filter(series__study=study)
    return instances.order_by(
        F("series__series_number").asc(nulls_last=True),
        "series__id",
        F("instance_number").asc(nulls_last=True),
        "id",
    )


def series_thumbnail_instance(*, clinic: Clinic | int, series: Series) -> Instance | None:
    """Return the series' middle image instance (by instance number), the one its thumbnail shows."""
    images = (
        Instance.objects.for_clinic(clinic)
        .filter(series=series, rows__isnull=False, columns__isnull=False)
        .order_by(F("instance_number").asc(nulls_last=True), "id")
    )
    count = images.count()
    if count == 0:
        return None
    return images[count // 2]


def trash_list(*, clinic: Clinic | int) -> QuerySet[Study]:
    """Return the clinic's trashed studies, most recently deleted first, with who deleted them."""
    return (
        Study.objects.for_clinic(clinic)
        .filter(deleted_at__isnull=False)
        .select_related("patient", "deleted_by")
        .order_by("-deleted_at", "-id")
    )


def trash_get(*, clinic: Clinic | int, study_uuid: UUID | str) -> Study | None:
    return Study.objects.for_clinic(clinic).filter(uuid=study_uuid, deleted_at__isnull=False).first()


def trash_purge_due(*, now: datetime) -> QuerySet[Study]:
    """Return trashed studies of every clinic whose time in the trash is over.

    Cross-clinic on purpose: the periodic purge is maintenance over all tenants; each study is then
    purged by a task scoped to its own clinic.
    """
    cutoff = now - timedelta(days=settings.TRASH_DAYS)
    return Study.objects.filter(deleted_at__isnull=False, deleted_at__lte=cutoff).only("id", "clinic_id")


def study_recent(*, clinic: Clinic | int, limit: int = 5) -> list[Study]:
    """Return the most recently stored studies, for the dashboard."""
    return list(study_list(clinic=clinic, search=StudySearch(sort="-created"))[:limit])


def study_count_live(*, clinic: Clinic) -> int:
    """How many studies the clinic holds outside the trash."""
    return Study.objects.for_clinic(clinic).filter(deleted_at__isnull=True).count()


def study_list_by_uids(*, clinic: Clinic, uids: list[str]) -> list[Study]:
    """The clinic's live studies named by these Study Instance UIDs; Http404 naming any not found.

    Another clinic's study, a trashed one and one that does not exist all answer the same.
    """
    from django.http import Http404

    found = list(Study.objects.for_clinic(clinic).filter(study_instance_uid__in=uids, deleted_at__isnull=True))
    missing = sorted(set(uids) - {study.study_instance_uid for study in found})
    if missing:
        raise Http404(f"No such study: {', '.join(missing)}")
    return found


def index_statistics_refresh() -> None:
    """Bring the planner's statistics of the index tables up to date (after a bulk load or rebuild).

    Autovacuum catches up on its own schedule; until then the planner judges a freshly filled table by
    its old size and may pick a plan that reads every row. On PostgreSQL, outside a transaction, the
    tables are vacuumed as well: an index-only scan (a name checked on the date index's entries, migration
    0026) reads the table row of every page not yet marked all-visible, which only VACUUM marks.
    """
    # VACUUM cannot run inside a transaction block.
    vacuum = connection.vendor == "postgresql" and not connection.in_atomic_block
    with connection.cursor() as cursor:
        for model in (Patient, Study, Series, Instance):
            table = connection.ops.quote_name(model._meta.db_table)
            cursor.execute(f"VACUUM (ANALYZE) {table}" if vacuum else f"ANALYZE {table}")


# How far an index table may grow (or shrink) past the size its SQLite statistics recorded before they
# are taken again.
STATISTICS_GROWTH_FACTOR = 4


def index_statistics_refresh_if_grown() -> list[str]:
    """Analyze again each index table whose SQLite statistics describe a much smaller (or larger) table.

    SQLite's planner trusts ``sqlite_stat1`` as it stands: statistics taken while a table held a few rows
    (by a migration on a new clinic, or ``rebuild_index`` early on) made it read every study for a name
    searched with a leading wildcard once the clinic had grown, instead of its trigram index. A table
    without statistics is left alone (the planner then assumes a large table, which suits these
    searches). PostgreSQL needs none of this: its autovacuum analyzes a table as it changes. Returns the
    tables analyzed.
    """
    if connection.vendor != "sqlite":
        return []
    analyzed = []
    with connection.cursor() as cursor:
        for model in (Patient, Study, Series, Instance):
            table = model._meta.db_table
            cursor.execute("SELECT stat FROM sqlite_stat1 WHERE tbl = %s", [table])
            recorded = [int(row[0].split()[0]) for row in cursor.fetchall() if row[0]]
            if not recorded:
                continue
            quoted = connection.ops.quote_name(table)
            # The highest id stands in for the row count: instant, where count(*) reads a whole index.
            cursor.execute(f"SELECT coalesce(max(id), 0) FROM {quoted}")
            rows, known = cursor.fetchone()[0], max(recorded)
            if rows > known * STATISTICS_GROWTH_FACTOR or known > max(rows, 1) * STATISTICS_GROWTH_FACTOR:
                cursor.execute(f"ANALYZE {quoted}")
                analyzed.append(table)
    return analyzed

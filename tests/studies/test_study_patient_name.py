"""The study row carries its patient's name, and name searches read it (issue 19).

A name search used to match patients first and then fetch their studies; now it runs on the study's
copy of the name. These tests pin that the copy is written by ingest, always equals the name shown (the
patient row's), is filled for studies indexed before it existed, and is what the doors search.
"""

from __future__ import annotations

from importlib import import_module

import pytest
from django.db import connection
from django.db.models import F
from pydicom.uid import generate_uid

from studies import matching
from studies.browse import selectors
from studies.models import Study
from tests.dicom_files import write_instance
from tests.factories import ingest_files, make_study, token_for

pytestmark = pytest.mark.django_db


def test_ingest_copies_the_patients_name_onto_each_new_study(clinic, tmp_path):
    first = write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid(), patient_name="ROE^ANNA",
                           patient_id="R-1")
    # The same patient later, spelled differently: the list shows the patient row's name, so does the copy.
    second = write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid(), patient_name="ROE^ANNE",
                            patient_id="R-1")

    ingest_files(clinic, [first, second])

    studies = list(Study.objects.for_clinic(clinic).select_related("patient"))
    assert len(studies) == 2
    assert {(s.patient_name, s.patient.patient_name) for s in studies} == {("ROE^ANNA", "ROE^ANNA")}


class _Editor:
    """What the backfill uses of a schema editor (SQLite refuses one inside the test's transaction)."""

    def execute(self, sql: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql)


def test_the_migration_fills_the_copy_for_studies_indexed_before_it(clinic):
    study = make_study(clinic=clinic, patient_name="OLD^INDEX")
    Study.objects.filter(pk=study.pk).update(patient_name="")
    migration = import_module("studies.migrations.0023_study_patient_name")

    migration.backfill(None, _Editor())

    study.refresh_from_db()
    assert study.patient_name == "OLD^INDEX"


def test_page_qido_and_sort_use_the_copy(client, clinic):
    for name in ("SMITH^MARY", "SMITHSON^JOHN", "ADAMS^MARY", "ZUCKER^ANNA"):
        make_study(clinic=clinic, patient_name=name)

    found = selectors.study_list(clinic=clinic, search=selectors.StudySearch(patient_name="mary", sort="patient"))
    assert [s.patient.patient_name for s in found] == ["ADAMS^MARY", "SMITH^MARY"]
    response = client.get(f"/dicomweb/{clinic.slug}/studies", {"PatientName": "*SON^*"},
                          HTTP_AUTHORIZATION=f"Bearer {token_for(clinic)}")
    assert [r["00100010"]["Value"][0]["Alphabetic"] for r in response.json()] == ["SMITHSON^JOHN"]


sqlite_only = pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's trigram index (migration 0024)")


@sqlite_only
def test_sqlite_trigram_index_follows_every_write_of_the_study_table(clinic):
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'studies_study'")
        triggers = {row[0] for row in cursor.fetchall()}
    # Django rebuilds a SQLite table for some schema changes and drops its triggers (see migration 0024).
    assert triggers >= {"study_name_fts_insert", "study_name_fts_update", "study_name_fts_delete"}
    study = make_study(clinic=clinic, patient_name="JOHNSON^MARY")
    search = selectors.StudySearch(patient_name="*son^?ary")
    assert list(selectors.study_list(clinic=clinic, search=search)) == [study]

    Study.objects.filter(pk=study.pk).update(patient_name="JOHNSON^ANNA")
    assert list(selectors.study_list(clinic=clinic, search=search)) == []
    assert list(selectors.study_list(clinic=clinic, search=selectors.StudySearch(patient_name="*NNA"))) == [study]
    Study.objects.filter(pk=study.pk).delete()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM study_name_fts WHERE rowid = %s", [study.pk])
        assert cursor.fetchone()[0] == 0


def _leading_wildcard_plan(clinic) -> str:
    queryset = Study.objects.for_clinic(clinic).filter(matching.person_name_q("patient_name", "*SON^?ARY"))
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        return " ".join(str(row[-1]) for row in cursor.fetchall())


def _statistics_forget() -> None:
    # Statistics another test committed (an ANALYZE of a few rows) would decide the plan here; within
    # the test's transaction, so they come back afterwards (this connection reads them again on its next
    # schema load).
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_schema WHERE name = 'sqlite_stat1'")
        if cursor.fetchone():
            cursor.execute("DELETE FROM sqlite_stat1 WHERE tbl = 'studies_study'")
            cursor.execute("ANALYZE sqlite_schema")


@sqlite_only
def test_sqlite_leading_wildcard_name_search_reads_the_trigram_index(clinic):
    _statistics_forget()
    make_study(clinic=clinic, patient_name="JOHNSON^MARY")

    plan = _leading_wildcard_plan(clinic)

    assert "study_name_fts" in plan and "SCAN studies_study" not in plan
    assert Study.objects.for_clinic(clinic).filter(matching.person_name_q("patient_name", "*SON^?ARY")).count() == 1


@sqlite_only
def test_sqlite_statistics_taken_on_a_small_clinic_are_taken_again_once_it_has_grown(clinic):
    _statistics_forget()
    make_study(clinic=clinic, patient_name="JOHNSON^MARY")
    make_study(clinic=clinic, patient_name="DOE^JANE")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE studies_study")
    for n in range(300):
        make_study(clinic=clinic, patient_name=f"ROE^RICHARD{n}")
    # What the hourly check finds: statistics of 2 studies for 302, so every study is read.
    assert "SCAN studies_study" in _leading_wildcard_plan(clinic)

    assert "studies_study" in selectors.index_statistics_refresh_if_grown()

    plan = _leading_wildcard_plan(clinic)
    assert "study_name_fts" in plan and "SCAN studies_study" not in plan
    assert selectors.index_statistics_refresh_if_grown() == []  # up to date now


def test_studies_page_counts_a_name_search_from_its_lookup(client, clinician, clinic, django_assert_max_num_queries):
    for number in range(3):
        make_study(clinic=clinic, patient_name=f"COUNTED^N{number}")
    make_study(clinic=clinic, patient_name="OTHER^NAME")
    client.force_login(clinician)
    url = f"/c/{clinic.slug}/studies/"
    client.get(url, {"patient_name": "counted"})

    with django_assert_max_num_queries(20):  # the lookup's count stands for the page's count query
        response = client.get(url, {"patient_name": "counted"})

    assert response.context["page"].paginator.count == 3
    assert not response.context["page"].paginator.is_capped
    assert len(response.context["page"].object_list) == 3


def test_studies_page_says_more_than_the_cap_for_a_common_name(client, clinician, clinic):
    patient = make_study(clinic=clinic, patient_name="COMMON^NAME").patient
    Study.objects.bulk_create(
        Study(clinic=clinic, patient=patient, patient_name=patient.patient_name, study_instance_uid=f"1.2.3.{n}")
        for n in range(1001)
    )
    client.force_login(clinician)

    response = client.get(f"/c/{clinic.slug}/studies/", {"patient_name": "common"})

    assert response.context["page"].paginator.is_capped
    assert len(response.context["page"].object_list) == 25


@sqlite_only
def test_sqlite_name_matching_over_a_thousand_studies_walks_the_date_order(clinic):
    """Over 1,000 matches, the page is found by walking the date order (a few rows per match shown); with
    the name indexes' prefix ranges left in, SQLite read every match from them and sorted them all."""
    from datetime import date, timedelta

    from studies.models import Patient

    patient = Patient.objects.create(clinic=clinic, patient_id="S-1", patient_name="SMITH^ANNA")
    Study.objects.bulk_create(
        Study(clinic=clinic, patient=patient, patient_name="SMITH^ANNA", study_instance_uid=f"1.2.9.{n}",
              study_date=date(2015, 1, 1) + timedelta(days=n))
        for n in range(matching.PATIENT_IDS_MAX + 10)
    )
    Study.objects.bulk_create(
        Study(clinic=clinic, patient=patient, patient_name=f"{family}^ANNA", study_instance_uid=f"1.2.8.{n}",
              study_date=date(2015, 1, 1) + timedelta(days=n % 3000))
        for n, family in enumerate(["BROWN", "JONES", "DAVIS", "MILLER", "WILSON", "TAYLOR"] * 1000)
    )
    selectors.index_statistics_refresh()  # as after a bulk load: SQLite then knows the names' spread
    newest = Study.objects.for_clinic(clinic).filter(patient_name="SMITH^ANNA").order_by("-study_date")[:3]
    queryset, matched = selectors.study_matches(clinic=clinic, search=selectors.StudySearch(patient_name="smi"))
    sql, params = queryset[:25].query.sql_with_params()

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())

    assert matched == matching.PATIENT_IDS_MAX + 1  # "more than 1,000"
    # The live studies' date index (migration 0027), in its order: no sort of each day's rows again.
    assert "study_live_date_sqlite" in plan and "study_name_upper_sqlite" not in plan, plan
    assert "TEMP B-TREE" not in plan, plan
    assert list(queryset[:3]) == list(newest)


@sqlite_only
def test_sqlite_qido_walk_checks_names_on_the_date_index_alone(clinic):
    """QIDO-RS's page of ids for a common name is found by walking the date order; the live studies' date
    index carries the name (migration 0027), so SQLite reads no table row for the studies it passes."""
    from datetime import date, timedelta

    from studies.models import Patient

    patient = Patient.objects.create(clinic=clinic, patient_id="S-2", patient_name="JOHNSON^ANNA")
    Study.objects.bulk_create(
        Study(clinic=clinic, patient=patient, patient_name=name, study_instance_uid=f"1.2.7.{n}",
              study_date=date(2015, 1, 1) + timedelta(days=n % 3000))
        for n, name in enumerate(["JOHNSON^ANNA", "BROWN^ANNA"] * (matching.PATIENT_IDS_MAX + 10))
    )
    selectors.index_statistics_refresh()
    queryset = matching.rows_narrow(
        Study.objects.for_clinic(clinic).filter(deleted_at=None), matching.person_name_q("patient_name", "*SON^*")
    )
    newest_first = (F("study_date").desc(nulls_last=True), F("study_time").desc(nulls_last=True), "-id")
    sql, params = queryset.order_by(*newest_first).values("id")[:101].query.sql_with_params()

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())

    assert "COVERING INDEX study_live_date_sqlite" in plan and "TEMP B-TREE" not in plan, plan


@sqlite_only
@pytest.mark.parametrize(("search", "index"), [
    (selectors.StudySearch(modality="MR"), "study_modalities_sqlite"),
    (selectors.StudySearch(description="brain"), "study_description_sqlite"),
])
def test_sqlite_page_counts_modality_and_description_on_their_indexes_alone(clinic, search, index):
    """The page counts up to 1,001 matches; SQLite reads them from a covering index (migration 0027), not
    from the study table's rows."""
    from studies.models import Patient

    patient = Patient.objects.create(clinic=clinic, patient_id="C-1", patient_name="COUNT^ANNA")
    Study.objects.bulk_create(
        Study(
            clinic=clinic,
            patient=patient,
            patient_name="COUNT^ANNA",
            study_instance_uid=f"1.2.6.{n}",
            modalities_in_study=["CT", "MR", "CT\\SR", "US"][n % 4],
            study_description=["CT HEAD", "MRI BRAIN", "CHEST XR"][n % 3],
        )
        for n in range(3000)
    )
    selectors.index_statistics_refresh()
    queryset, _ = selectors.study_matches(clinic=clinic, search=search)
    # What the page's capped count runs (selectors.study_count).
    sql, params = queryset.order_by().values("id")[:1001].query.sql_with_params()

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + sql, params)
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())

    assert f"COVERING INDEX {index}" in plan, plan


@sqlite_only
@pytest.mark.parametrize("words", ["smi", "mary"])
def test_sqlite_name_probe_reads_the_name_index_alone(clinic, words):
    """The probe for up to 1,001 matching ids of a common name (a family start, a given name) checks the
    pattern and that the study is live in the name index's entries (migration 0028), reading no study row."""
    from datetime import date, timedelta

    from django.test.utils import CaptureQueriesContext

    from studies.models import Patient

    patient = Patient.objects.create(clinic=clinic, patient_id="P-1", patient_name="SMITH^MARY")
    Study.objects.bulk_create(
        Study(clinic=clinic, patient=patient, patient_name=name, study_instance_uid=f"1.2.9.{n}",
              study_date=date(2015, 1, 1) + timedelta(days=n % 3000))
        for n, name in enumerate(["SMITH^MARY", "BROWN^ANNA", "JONES^MARY", "SMIRNOV^IVAN"] * 600)
    )  # fmt: skip
    selectors.index_statistics_refresh()

    with CaptureQueriesContext(connection) as queries:
        _, matched = selectors.study_matches(clinic=clinic, search=selectors.StudySearch(patient_name=words))
    [probe] = [q["sql"] for q in queries.captured_queries if f"LIMIT {matching.PATIENT_IDS_MAX + 1}" in q["sql"]]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN QUERY PLAN " + probe)
        plan = " ".join(str(row[-1]) for row in cursor.fetchall())

    assert matched == matching.PATIENT_IDS_MAX + 1
    assert "COVERING INDEX study_" in plan, plan

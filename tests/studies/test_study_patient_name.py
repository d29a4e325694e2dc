"""The study row carries its patient's name, and name searches read it (issue 19).

A name search used to match patients first and then fetch their studies; now it runs on the study's
copy of the name. These tests pin that the copy is written by ingest, always equals the name shown (the
patient row's), is filled for studies indexed before it existed, and is what the doors search.
"""

from __future__ import annotations

from importlib import import_module

import pytest
from django.db import connection
from pydicom.uid import generate_uid

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


def test_the_migration_fills_the_copy_for_studies_indexed_before_it(clinic):
    study = make_study(clinic=clinic, patient_name="OLD^INDEX")
    Study.objects.filter(pk=study.pk).update(patient_name="")
    migration = import_module("studies.migrations.0023_study_patient_name")

    with connection.schema_editor() as editor:
        migration.backfill(None, editor)

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

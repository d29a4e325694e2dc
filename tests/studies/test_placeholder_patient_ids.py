"""Placeholder Patient IDs ("UNKNOWN", "0", ...): told apart by name and birth date, like an empty ID.

Two unidentified people sent as "UNKNOWN" were once one patient: the second's study was listed under the
first's name, shared with it and answered to C-FIND as its study.
"""

from __future__ import annotations

from datetime import date
from http import HTTPStatus
from pathlib import Path

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from portal.exceptions import PortalError
from studies.anonymize.services import AnonymizeBatch, project_create
from studies.backup import recovery
from studies.models import Patient, Study
from studies.patients import patient_id_identifies
from studies.sharing import services as sharing_services
from tests.dicom_files import dataset_write, sample_dataset
from tests.factories import ingest_files, token_for
from tests.studies.backup_support import (
    backup_cache_clear,  # noqa: F401 - autouse
    ingest_replicated,
    lose_the_database,
)
from tests.studies.dimse_support import c_find, identifier, store_with_pynetdicom

pytestmark = pytest.mark.django_db

JANUARY, MARCH = date(1980, 1, 2), date(1991, 3, 4)


def _file(folder: Path, *, name: str, patient_id: str = "UNKNOWN", birth: date | None = JANUARY) -> Path:
    """A CT file of a study of its own, for this patient."""
    ds = sample_dataset("CT_small.dcm", StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(),
                        PatientName=name, PatientID=patient_id,
                        PatientBirthDate=birth.strftime("%Y%m%d") if birth else "")
    return dataset_write(ds, folder / f"{ds.SOPInstanceUID}.dcm")


def _shown(clinic) -> dict[str, str]:
    """Each study's own patient name, to the name of the patient it is listed under."""
    return {s.patient_name: s.patient.patient_name for s in Study.objects.for_clinic(clinic).select_related("patient")}


def test_two_unknown_patients_with_different_names_stay_two_patients(clinic, tmp_path):
    ingest_files(clinic, [_file(tmp_path, name="SMITH^ANN"), _file(tmp_path, name="JONES^BOB", birth=MARCH)])

    assert _shown(clinic) == {"SMITH^ANN": "SMITH^ANN", "JONES^BOB": "JONES^BOB"}
    assert sorted(Patient.objects.for_clinic(clinic).values_list("patient_id", "identified_by_id")) == [
        ("UNKNOWN", False), ("UNKNOWN", False)]


def test_same_name_different_birth_date_under_a_placeholder_is_two_patients(clinic, tmp_path):
    ingest_files(clinic, [_file(tmp_path, name="DOE^JOHN"), _file(tmp_path, name="DOE^JOHN", birth=MARCH)])

    assert Patient.objects.for_clinic(clinic).count() == 2


def test_one_unknown_patients_studies_stay_together(clinic, tmp_path):
    ingest_files(clinic, [_file(tmp_path, name="DOE^JOHN"), _file(tmp_path, name="DOE^JOHN")])

    [patient] = Patient.objects.for_clinic(clinic)
    assert patient.studies.count() == 2


def test_a_placeholder_counts_whatever_its_case_and_trailing_space(clinic, tmp_path):
    ingest_files(clinic, [_file(tmp_path, name="SMITH^ANN", patient_id="unknown "),
                          _file(tmp_path, name="JONES^BOB", patient_id="unknown ", birth=MARCH)])

    assert Patient.objects.for_clinic(clinic).filter(identified_by_id=False).count() == 2


@pytest.mark.parametrize("value", ["UNKNOWN", " unknown ", "Anonymous", "0", "-", "?", "N/A", "none", ""])
def test_placeholders_and_the_empty_id_identify_no_one(value):
    assert not patient_id_identifies(value)


@pytest.mark.parametrize("value", ["R-1", "00123", "UNKNOWN-7", "0 0"])
def test_real_ids_identify_their_patient(value):
    assert patient_id_identifies(value)


def test_a_real_id_still_makes_one_patient_whatever_the_name(clinic, tmp_path):
    ingest_files(clinic, [_file(tmp_path, name="ROE^ANNA", patient_id="R-1"),
                          _file(tmp_path, name="ROE^ANNE", patient_id="R-1", birth=MARCH)])

    [patient] = Patient.objects.for_clinic(clinic)
    assert patient.studies.count() == 2 and patient.identified_by_id


def test_with_the_setting_emptied_a_placeholder_is_an_id_again(clinic, tmp_path, settings):
    settings.PLACEHOLDER_PATIENT_IDS = []

    ingest_files(clinic, [_file(tmp_path, name="SMITH^ANN"), _file(tmp_path, name="JONES^BOB", birth=MARCH)])

    [patient] = Patient.objects.for_clinic(clinic)
    assert patient.studies.count() == 2 and patient.identified_by_id


def test_a_configured_placeholder_is_one(clinic, tmp_path, settings):
    settings.PLACEHOLDER_PATIENT_IDS = ["TRAUMA"]

    ingest_files(clinic, [_file(tmp_path, name="SMITH^ANN", patient_id="trauma"),
                          _file(tmp_path, name="JONES^BOB", patient_id="TRAUMA", birth=MARCH)])

    assert Patient.objects.for_clinic(clinic).count() == 2


def test_a_real_id_is_still_one_row_in_the_database(clinic, tmp_path):
    [instance] = ingest_files(clinic, [_file(tmp_path, name="ROE^ANNA", patient_id="R-1")])

    with pytest.raises(IntegrityError), transaction.atomic():
        Patient.objects.create(clinic=clinic, patient_id="R-1", patient_name="ROE^OTHER")

    assert Patient.objects.for_clinic(clinic).get() == instance.series.study.patient


def test_qido_by_the_placeholder_finds_both_unknown_patients_studies(client, clinic, tmp_path):
    ingest_files(clinic, [_file(tmp_path, name="SMITH^ANN"), _file(tmp_path, name="JONES^BOB", birth=MARCH)])
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {token_for(clinic)}"

    response = client.get("/dicomweb/clinic-a/studies", {"PatientID": "UNKNOWN", "includefield": "00100010"})

    assert response.status_code == HTTPStatus.OK
    assert sorted(s["00100010"]["Value"][0]["Alphabetic"] for s in response.json()) == ["JONES^BOB", "SMITH^ANN"]


def test_one_link_may_not_share_two_unknown_patients_studies(clinic, tmp_path):
    ingest_files(clinic, [_file(tmp_path, name="SMITH^ANN"), _file(tmp_path, name="JONES^BOB", birth=MARCH)])

    with pytest.raises(PortalError):
        sharing_services.share_studies_check(studies=list(Study.objects.for_clinic(clinic)))


def test_two_unknown_patients_get_two_pseudonyms(clinic):
    batch = AnonymizeBatch(project_create(clinic=clinic, name="Research", pseudonym_prefix="RES"))

    first = batch.pseudonym({"patient_id": "UNKNOWN", "issuer": "", "patient_name": "SMITH^ANN"})
    second = batch.pseudonym({"patient_id": "UNKNOWN", "issuer": "", "patient_name": "JONES^BOB"})

    assert first.pseudonym != second.pseudonym


def test_a_real_id_keeps_one_pseudonym_across_names(clinic):
    batch = AnonymizeBatch(project_create(clinic=clinic, name="Research", pseudonym_prefix="RES"))

    first = batch.pseudonym({"patient_id": "R-1", "issuer": "", "patient_name": "ROE^ANNA"})
    second = batch.pseudonym({"patient_id": "R-1", "issuer": "", "patient_name": "ROE^ANNE"})

    assert first.pseudonym == second.pseudonym


def test_rebuild_index_keeps_two_unknown_patients_apart(clinic, tmp_path, django_capture_on_commit_callbacks):
    ingest_replicated(clinic, [_file(tmp_path, name="SMITH^ANN"), _file(tmp_path, name="JONES^BOB", birth=MARCH)],
                      django_capture_on_commit_callbacks)
    lose_the_database()

    report = recovery.index_rebuild(jobs=1)

    assert report.failed == []
    assert _shown(clinic) == {"SMITH^ANN": "SMITH^ANN", "JONES^BOB": "JONES^BOB"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("tasks_run_inline")
def test_c_store_of_two_unknown_patients_makes_two_patients(clinic, scp_port, tmp_path):
    paths = [_file(tmp_path, name="SMITH^ANN"), _file(tmp_path, name="JONES^BOB", birth=MARCH)]

    statuses = store_with_pynetdicom(scp_port, clinic.ae_title, paths)

    assert statuses == [0x0000, 0x0000]
    assert _shown(clinic) == {"SMITH^ANN": "SMITH^ANN", "JONES^BOB": "JONES^BOB"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("tasks_run_inline")
def test_c_find_by_the_placeholder_answers_each_unknown_patient_and_study(clinic, scp_port, tmp_path):
    ingest_files(clinic, [_file(tmp_path, name="SMITH^ANN"), _file(tmp_path, name="JONES^BOB", birth=MARCH)])

    patients, patient_status = c_find(scp_port, clinic.ae_title, PatientRootQueryRetrieveInformationModelFind,
                                      identifier(QueryRetrieveLevel="PATIENT", PatientID="UNKNOWN", PatientName="",
                                                 PatientBirthDate=""))
    studies, study_status = c_find(scp_port, clinic.ae_title, StudyRootQueryRetrieveInformationModelFind,
                                   identifier(QueryRetrieveLevel="STUDY", PatientID="UNKNOWN", PatientName="",
                                              StudyInstanceUID=""))

    assert (patient_status, study_status) == (0x0000, 0x0000)
    assert sorted(str(p.PatientName) for p in patients) == ["JONES^BOB", "SMITH^ANN"]
    assert sorted(str(s.PatientName) for s in studies) == ["JONES^BOB", "SMITH^ANN"]


@pytest.mark.django_db(transaction=True)
def test_the_migration_marks_existing_patients_and_keeps_ids_unique(clinic):
    executor = MigrationExecutor(connection)
    before, after = [("studies", "0029_patient_without_id")], [("studies", "0030_patient_identified_by_id")]
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps.get_model("studies", "Patient")
        old.objects.create(clinic_id=clinic.pk, patient_id="", patient_name="SMITH^ANN")
        old.objects.create(clinic_id=clinic.pk, patient_id="", patient_name="JONES^BOB")
        old.objects.create(clinic_id=clinic.pk, patient_id="UNKNOWN", patient_name="DOE^JOHN")
        old.objects.create(clinic_id=clinic.pk, patient_id="R-1", patient_name="ROE^ANNA")
        executor = MigrationExecutor(connection)

        executor.migrate(after)

        new = executor.loader.project_state(after).apps.get_model("studies", "Patient")
        assert sorted(new.objects.values_list("patient_id", "identified_by_id")) == [
            ("", False), ("", False), ("R-1", True), ("UNKNOWN", True)]
        with pytest.raises(IntegrityError), transaction.atomic():
            new.objects.create(clinic_id=clinic.pk, patient_id="R-1", patient_name="ROE^OTHER")
        new.objects.create(clinic_id=clinic.pk, patient_id="UNKNOWN", patient_name="OTHER^ONE", identified_by_id=False)
    finally:
        MigrationExecutor(connection).migrate(executor.loader.graph.leaf_nodes())

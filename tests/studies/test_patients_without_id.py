"""Patients without a Patient ID: told apart by name and birth date, never merged into one patient."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from studies.models import Patient, Study
from tests.dicom_files import write_instance
from tests.factories import ingest_files

pytestmark = pytest.mark.django_db


def _file(tmp_path, name: str, patient_id: str = "", **kwargs):
    return write_instance(tmp_path, study_uid=generate_uid(), series_uid=generate_uid(), patient_name=name,
                          patient_id=patient_id, **kwargs)


def test_two_unidentified_patients_keep_their_own_names(clinic, tmp_path):
    """Both were once one patient: the second study was listed, and answered to C-FIND, as SMITH^ANN's."""
    ingest_files(clinic, [_file(tmp_path, "SMITH^ANN"), _file(tmp_path, "JONES^BOB")])

    shown = {s.patient_name: s.patient.patient_name for s in Study.objects.for_clinic(clinic).select_related("patient")}
    assert shown == {"SMITH^ANN": "SMITH^ANN", "JONES^BOB": "JONES^BOB"}
    assert Patient.objects.for_clinic(clinic).filter(patient_id="").count() == 2


def test_an_unidentified_patients_studies_stay_together(clinic, tmp_path):
    ingest_files(clinic, [_file(tmp_path, "DOE^JOHN"), _file(tmp_path, "DOE^JOHN")])

    [patient] = Patient.objects.for_clinic(clinic)
    assert patient.studies.count() == 2


def test_patients_with_an_id_are_still_one_patient_per_id(clinic, tmp_path):
    ingest_files(clinic, [_file(tmp_path, "ROE^ANNA", "R-1"), _file(tmp_path, "ROE^ANNE", "R-1")])

    [patient] = Patient.objects.for_clinic(clinic)
    assert patient.studies.count() == 2

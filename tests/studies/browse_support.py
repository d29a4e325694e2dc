"""Helpers for the browse tests: index rows made directly, and real DICOM files stored through ingest."""

from __future__ import annotations

import itertools
from datetime import date
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from studies.ingest import instance_ingest
from studies.models import Instance, Patient, Study
from tenants.models import Clinic

_numbers = itertools.count(1)


def make_study(
    *,
    clinic: Clinic,
    patient_name: str = "DOE^JANE",
    patient_id: str | None = None,
    birth_date: date | None = date(1970, 1, 2),
    sex: str = "F",
    **fields: object,
) -> Study:
    """Create a patient (or reuse one by ID) and a study row, without any stored object."""
    number = next(_numbers)
    patient, _ = Patient.objects.get_or_create(
        clinic=clinic,
        patient_id=patient_id or f"PID{number:06d}",
        issuer_of_patient_id="",
        defaults={"patient_name": patient_name, "patient_birth_date": birth_date, "patient_sex": sex},
    )
    fields.setdefault("study_instance_uid", f"1.2.826.0.1.3680043.10.1.{number}")
    fields.setdefault("study_date", date(2024, 1, 1))
    fields.setdefault("modalities_in_study", "CT")
    return Study.objects.create(clinic=clinic, patient=patient, **fields)


def write_series(
    folder: Path,
    *,
    count: int = 3,
    source: str = "CT_small.dcm",
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    patient_name: str = "ROE^RICHARD",
    patient_id: str = "RR-1",
    accession: str = "ACC-1",
) -> list[Path]:
    """Write ``count`` real DICOM files of one series (copies of a pydicom sample with fresh UIDs)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for number in range(1, count + 1):
        ds = dcmread(get_testdata_file(source))
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = series_number
        ds.InstanceNumber = number
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.AccessionNumber = accession
        path = folder / f"s{series_number}-{number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ingest_files(*, clinic: Clinic, paths: list[Path]) -> list[Instance]:
    """Store and index files through the real ingest service."""
    return [instance_ingest(clinic=clinic, source_path=str(path)).instance for path in paths]

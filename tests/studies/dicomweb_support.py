"""Helpers for the DICOMweb tests: real DICOM files (pydicom samples with fresh UIDs) and requests."""

from __future__ import annotations

import secrets
from datetime import date, time
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from studies.ingest import instance_ingest
from studies.models import Instance
from tenants import services
from tenants.models import Clinic


def write_instance(
    folder: Path,
    *,
    source: str = "CT_small.dcm",
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    instance_number: int = 1,
    series_number: int = 1,
    patient_name: str = "DOE^JANE",
    patient_id: str = "PID-1",
    accession: str = "ACC-1",
    study_date: date = date(2024, 1, 15),
    study_time: time = time(10, 15),
    modality: str | None = None,
    description: str = "CT HEAD",
    referring: str = "WHO^CARES",
) -> Path:
    """Write one real DICOM file copied from a pydicom sample, with the given identity."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = dcmread(get_testdata_file(source))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = instance_number
    ds.SeriesNumber = series_number
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.AccessionNumber = accession
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = study_time.strftime("%H%M%S")
    ds.StudyDescription = description
    ds.ReferringPhysicianName = referring
    if modality:
        ds.Modality = modality
    path = folder / f"{secrets.token_hex(6)}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def ingest(clinic: Clinic, paths: list[Path]) -> list[Instance]:
    return [instance_ingest(clinic=clinic, source_path=str(p), source="test").instance for p in paths]


def token_for(clinic: Clinic, role: str = "clinician") -> str:
    return services.api_token_create(clinic=clinic, name=f"dicomweb-{role}", role=role).secret


def multipart_body(paths: list[Path], boundary: str = "test-boundary-7d1e") -> tuple[bytes, str]:
    """Build a STOW-RS body from files; return it and its Content-Type."""
    body = b""
    for path in paths:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """Split a multipart/related answer into its part bodies."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    pieces = body.split(b"--" + boundary.encode())
    parts = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        _, _, content = piece.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts

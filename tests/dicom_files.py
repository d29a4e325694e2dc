"""The one builder of DICOM files for tests: pydicom's samples with a new identity, and small CT instances."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import date, time
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def _shared_data_dir() -> Path:
    """The project's shared test data: ``SHARED_DATA_DIR``, or ``../shared/data`` beside the checkout."""
    configured = os.environ.get("SHARED_DATA_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data"


SHARED_DATA_DIR = _shared_data_dir()
EDGE_DIR = SHARED_DATA_DIR / "dicom-edge"
PYDICOM_SAMPLES = EDGE_DIR / "pydicom-test-files"


def sample_path(name: str) -> Path:
    """Return the path of one of pydicom's bundled test files (``CT_small.dcm``, ``MR_small_RLE.dcm``...)."""
    found = get_testdata_file(name)
    if found is None:
        found = str(EDGE_DIR / "pydicom-test-files" / name)
    return Path(found)


def copy_sample(name: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample_path(name), dest)
    return dest


def _image_dataset(sop_class: str, *, sop_uid: str | None, rows: int, columns: int, bits_stored: int) -> Dataset:
    """A dataset with File Meta Information (explicit VR little endian) and a 16-bit grayscale pixel module."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    return ds


def ct_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "TEST-0001",
    patient_name: str = "Test^Patient",
    modality: str = "CT",
    rows: int = 16,
    columns: int = 16,
    frames: int = 1,
    instance_number: int = 1,
    pixel_seed: int = 0,
) -> Dataset:
    """Build a small, valid CT instance (16-bit pixels) with fresh UIDs unless given."""
    ds = _image_dataset(CTImageStorage, sop_uid=sop_uid, rows=rows, columns=columns, bits_stored=12)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = date(2024, 5, 6).strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-1"
    ds.StudyDescription = "Test study"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(pixel_seed)
    ds.PixelData = rng.integers(0, 4096, size=rows * columns * frames, dtype=np.uint16).tobytes()
    return ds


def write_ct(path: Path, **kwargs: object) -> Path:
    """Write a small valid CT instance as a Part 10 file; see :func:`ct_dataset` for the arguments."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ct_dataset(**kwargs).save_as(path, enforce_file_format=True)  # type: ignore[arg-type]
    return path


# --- copies of pydicom's samples with a new identity ------------------------------------------------------
# The store path, the index and the DICOM services are tested on these: real files of many kinds, each
# made a distinct instance (new UIDs) of the study, series and patient a test asks for.


def sample_dataset(source: str = "CT_small.dcm", *, sop_uid: str | None = None, **attributes: object) -> Dataset:
    """A pydicom sample read afresh with a new SOP Instance UID (file meta too) and ``attributes`` set."""
    ds = dcmread(sample_path(source))
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def dataset_write(ds: Dataset, path: Path) -> Path:
    """Save ``ds`` as a Part 10 file at ``path`` (its folder made if need be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


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
    ds = sample_dataset(
        source, sop_uid=sop_uid, StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
        InstanceNumber=instance_number, SeriesNumber=series_number, PatientName=patient_name, PatientID=patient_id,
        AccessionNumber=accession, StudyDate=study_date.strftime("%Y%m%d"), StudyTime=study_time.strftime("%H%M%S"),
        StudyDescription=description, ReferringPhysicianName=referring,
    )
    if modality:
        ds.Modality = modality
    return dataset_write(ds, folder / f"{secrets.token_hex(6)}.dcm")


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
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    return [
        dataset_write(
            sample_dataset(
                source, StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SeriesNumber=series_number,
                InstanceNumber=number, PatientName=patient_name, PatientID=patient_id, AccessionNumber=accession,
            ),
            folder / f"s{series_number}-{number}.dcm",
        )
        for number in range(1, count + 1)
    ]


def write_dicom_files(folder: Path, *, count: int = 3, source: str = "CT_small.dcm", studies: int = 1,
                      patient_id: str = "BK-1") -> list[Path]:
    """Write ``count`` real DICOM files (sample copies with fresh UIDs) spread over ``studies`` studies.

    File ``n`` belongs to study ``n % studies``, whose patient is ``<patient_id>-<that number>``.
    """
    study_uids = [generate_uid() for _ in range(studies)]
    series_uids = [generate_uid() for _ in range(studies)]
    return [
        dataset_write(
            sample_dataset(
                source, StudyInstanceUID=study_uids[number % studies], SeriesInstanceUID=series_uids[number % studies],
                InstanceNumber=number + 1, PatientID=f"{patient_id}-{number % studies}",
            ),
            folder / f"{number:04d}.dcm",
        )
        for number in range(count)
    ]


@dataclass
class StudyFiles:
    study_uid: str
    patient_id: str
    files: list[Path] = field(default_factory=list)
    sop_uids: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)


def write_study(
    folder: Path,
    *,
    samples: list[str] | None = None,
    patient_id: str = "PID-1",
    patient_name: str = "DOE^JANE",
    accession: str = "ACC-1",
    study_date: date = date(2024, 1, 15),
    copies: int = 1,
) -> StudyFiles:
    """Write one study made of real sample files, one series per sample, ``copies`` instances each."""
    study = StudyFiles(study_uid=generate_uid(), patient_id=patient_id)
    for series_number, sample in enumerate(samples or ["CT_small.dcm"], start=1):
        series_uid = generate_uid()
        study.series_uids.append(series_uid)
        for number in range(1, copies + 1):
            ds = sample_dataset(
                sample, PatientID=patient_id, PatientName=patient_name, PatientBirthDate="19700101",
                AccessionNumber=accession, StudyDate=study_date.strftime("%Y%m%d"), StudyTime="101500",
                StudyDescription="DIMSE TEST", StudyInstanceUID=study.study_uid, SeriesInstanceUID=series_uid,
                SeriesNumber=series_number, InstanceNumber=number,
            )
            # DCMTK's senders drop trailing padding (PS3.10 allows it), so byte comparisons would differ.
            if "DataSetTrailingPadding" in ds:
                del ds.DataSetTrailingPadding
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
            study.files.append(dataset_write(ds, folder / f"{len(study.files) + 1:04d}.dcm"))
            study.sop_uids.append(str(ds.SOPInstanceUID))
    return study


_CHUNK = 1024 * 1024


def write_large_multiframe(path: Path, size_bytes: int, *, rows: int = 512, columns: int = 512) -> Path:
    """Write a valid multi-frame 16-bit DICOM file of about ``size_bytes``, streaming its pixel data."""
    frame_bytes = rows * columns * 2
    frames = max(1, size_bytes // frame_bytes)
    ds = _image_dataset(SecondaryCaptureImageStorage, sop_uid=None, rows=rows, columns=columns, bits_stored=16)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BIG-1"
    ds.PatientName = "Large^Upload"
    ds.Modality = "OT"
    ds.NumberOfFrames = frames
    ds.save_as(path, enforce_file_format=True)
    pattern = os.urandom(_CHUNK)
    remaining = frames * frame_bytes
    with path.open("ab") as out:
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length.
        out.write(b"\xe0\x7f\x10\x00OW\x00\x00" + remaining.to_bytes(4, "little"))
        while remaining:
            chunk = pattern[: min(_CHUNK, remaining)]
            out.write(chunk)
            remaining -= len(chunk)
    return path

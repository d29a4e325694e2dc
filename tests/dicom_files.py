"""Real DICOM files for tests: pydicom's bundled samples and small CT instances built in memory."""

from __future__ import annotations

import os
import shutil
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


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
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
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
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
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

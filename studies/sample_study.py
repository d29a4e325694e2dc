"""A small synthetic CT study the project makes itself, so the demo clinic has something to look at.

Twenty axial slices of a computed phantom (body outline, lungs, heart, spine, a small lesion) in
Hounsfield units, 256 x 256 pixels, about 2.6 MB in all. Nothing is downloaded and no real patient is
involved. UIDs are derived from fixed names, so seeding twice finds the same study "already present".
"""

from __future__ import annotations

import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from studies.ingest import IngestResult, instance_ingest
from tenants.models import Clinic

SLICES = 20
SIZE = 256
PIXEL_MM = 1.5
SLICE_MM = 5.0
PATIENT_NAME = "Sample^Demo"
PATIENT_ID = "DEMO-0001"
STUDY_DESCRIPTION = "CT chest (synthetic sample)"


def _uid(name: str) -> str:
    return generate_uid(entropy_srcs=["pacs-portal sample study", name])


STUDY_INSTANCE_UID = _uid("study")


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def phantom_slice(index: int) -> np.ndarray:
    """One slice in Hounsfield units; organs grow and shrink along the series like a real chest."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    t = index / (SLICES - 1)  # 0 at the top of the chest, 1 at the bottom
    hu = np.full((SIZE, SIZE), -1000.0, dtype=np.float32)  # air
    hu[_ellipse(y, x, 128, 128, 88, 118)] = -80.0  # subcutaneous fat
    hu[_ellipse(y, x, 128, 128, 80, 110)] = 40.0  # soft tissue
    lung = 38 + 14 * np.sin(np.pi * t)
    hu[_ellipse(y, x, 120, 80, lung + 14, lung - 8)] = -850.0
    hu[_ellipse(y, x, 120, 176, lung + 14, lung - 8)] = -850.0
    heart = 10 + 28 * np.sin(np.pi * min(1.0, t * 1.3))
    hu[_ellipse(y, x, 140, 140, heart, heart * 1.15)] = 45.0
    hu[_ellipse(y, x, 188, 128, 14, 16)] = 700.0  # vertebral body
    hu[_ellipse(y, x, 188, 128, 8, 9)] = 250.0  # marrow
    hu[_ellipse(y, x, 60, 128, 8, 10)] = 500.0  # sternum
    if 6 <= index <= 9:
        hu[_ellipse(y, x, 105, 70, 5, 5)] = 30.0  # a small nodule in the right lung
    noise = np.random.default_rng(index).normal(0.0, 8.0, size=(SIZE, SIZE)).astype(np.float32)
    return hu + noise


def sample_dataset(index: int) -> Dataset:
    """Slice ``index`` (0-based) as a complete CT Image Storage instance."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = _uid(f"slice {index}")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = STUDY_INSTANCE_UID
    ds.SeriesInstanceUID = _uid("series")
    ds.FrameOfReferenceUID = _uid("frame of reference")
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.SeriesDate = date(2024, 1, 15).strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = "093000"
    ds.AccessionNumber = "DEMO-1"
    ds.StudyID = "1"
    ds.StudyDescription = STUDY_DESCRIPTION
    ds.SeriesDescription = "Axial 5 mm"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = "PACS Portal sample generator"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.ImagePositionPatient = [-SIZE * PIXEL_MM / 2, -SIZE * PIXEL_MM / 2, -index * SLICE_MM]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = -index * SLICE_MM
    ds.SliceThickness = SLICE_MM
    ds.PixelSpacing = [PIXEL_MM, PIXEL_MM]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = SIZE
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    stored = np.clip(np.rint(phantom_slice(index) + 1024), 0, 4095).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    return ds


def sample_study_store(*, clinic: Clinic) -> list[IngestResult]:
    """Store the sample study in ``clinic`` through the normal ingest service (encrypted, indexed, replicated)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="sample-study-") as folder:
        for index in range(SLICES):
            path = Path(folder) / f"slice-{index + 1:02d}.dcm"
            sample_dataset(index).save_as(path, enforce_file_format=True)
            results.append(instance_ingest(clinic=clinic, source_path=str(path), source="sample"))
    return results

"""Offline export: a clinic's studies as plain DICOM files with a DICOMDIR, readable by any viewer.

pydicom's FileSet writes the standard media layout: a DICOMDIR at the top and a patient/study/series
folder tree (``PT000000/ST000000/SE000000/IM000000``, the 8-character names PS3.10 media require).
Like studies.dicom, this module uses pydicom because a DICOMDIR is DICOM itself.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import UID, ExplicitVRLittleEndian

from studies.archive import objects
from studies.models import Instance, Study
from tenants.models import Clinic

# Attributes the DICOMDIR records need (PS3.3 F.5, Type 1); filled in only when an instance lacks them.
_RECORD_DEFAULTS = {
    "PatientID": "UNKNOWN",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "Modality": "OT",
    "SeriesNumber": 1,
    "InstanceNumber": 1,
}


@dataclass
class ExportReport:
    studies: int = 0
    instances: int = 0
    bytes: int = 0


def clinic_export(
    *, clinic: Clinic, target: Path, include_trash: bool = False, progress: Callable[[str], None] | None = None,
    study_ids: list[int] | None = None,
) -> ExportReport:
    """Decrypt every instance of the clinic (or of ``study_ids`` only) into ``target`` with a DICOMDIR."""
    say = progress or (lambda message: None)
    report = ExportReport()
    studies = Study.objects.for_clinic(clinic)
    if study_ids is not None:
        studies = studies.filter(pk__in=study_ids)
    if not include_trash:
        studies = studies.filter(deleted_at=None)
    instances = (
        Instance.objects.for_clinic(clinic)
        .filter(series__study__in=studies)
        .order_by("series__study__pk", "series__series_number", "series__pk", "instance_number", "pk")
        .values_list("object_key", "sop_class_uid", "sop_instance_uid", "transfer_syntax_uid", "size_bytes",
                     "series__study_id")
    )
    total = instances.count()
    say(f"{clinic.slug}: exporting {total} instances")
    fileset = FileSet()
    seen_studies: set[int] = set()
    workdir = Path(tempfile.mkdtemp(prefix="export-"))
    try:
        for position, (key, sop_class, sop_instance, syntax, size, study_id) in enumerate(instances, start=1):
            path = workdir / "current.dcm"
            with objects.object_open(clinic=clinic, key=key) as source, path.open("wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
            dataset = dcmread(path, force=True)
            if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = UID(sop_class)
                meta.MediaStorageSOPInstanceUID = UID(sop_instance)
                meta.TransferSyntaxUID = UID(syntax) if syntax else ExplicitVRLittleEndian
                dataset.file_meta = meta
            for keyword, value in _RECORD_DEFAULTS.items():
                if keyword not in dataset or dataset[keyword].value in (None, ""):
                    setattr(dataset, keyword, value)
            fileset.add(dataset)
            del dataset
            report.instances += 1
            report.bytes += size
            seen_studies.add(study_id)
            if position % 100 == 0 or position == total:
                say(f"{clinic.slug}: {position}/{total} instances decrypted")
        target.mkdir(parents=True, exist_ok=True)
        if report.instances:
            fileset.write(target)
        report.studies = len(seen_studies)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            fileset.clear()
    return report

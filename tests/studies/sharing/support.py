"""The sharing tests' stored studies: pydicom's sample files ingested into a clinic."""

from __future__ import annotations

import shutil
from pathlib import Path

from studies.ingest import instance_ingest
from studies.models import Study
from tests.dicom_files import PYDICOM_SAMPLES


def store(clinic, name: str, tmp_path: Path) -> Study:
    """Store one of pydicom's sample files in ``clinic``; return its study."""
    path = tmp_path / name
    shutil.copy(PYDICOM_SAMPLES / name, path)
    return instance_ingest(clinic=clinic, source_path=str(path)).instance.series.study

"""Fixtures shared by the studies tests: the portal's DIMSE listener and stored studies.

The helpers they use (and the DICOM file builders) are in ``tests/studies/dimse_support.py`` and
``tests/dicom_files.py``; a module that needs a different listener (no node, TLS) defines its own ``scp_port``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tenants.models import Clinic
from tests.dicom_files import StudyFiles, write_study
from tests.studies.dimse_support import VIEWER_AE, Receiver, ingest_paths, register_node, running_scp


@pytest.fixture
def scp_port(clinic: Clinic) -> Iterator[int]:
    """The portal's DIMSE listener in this process, with the test modality registered for ``clinic``."""
    register_node(clinic)
    with running_scp() as port:
        yield port


@pytest.fixture
def receiver(clinic: Clinic) -> Iterator[Receiver]:
    """A viewer's Storage SCP, registered as an outbound-only node of ``clinic`` (a C-MOVE destination)."""
    receiving = Receiver()
    register_node(clinic, ae_title=VIEWER_AE, port=receiving.port, allow_inbound=False)
    yield receiving
    receiving.close()


@pytest.fixture
def stored_ct_study(clinic: Clinic, tmp_path: Path) -> StudyFiles:
    """A CT study of one series of two instances, stored in ``clinic`` as an upload stores it.

    Its files stay under ``tmp_path / "originals"``: the tests compare what a node receives with them.
    """
    files = write_study(tmp_path / "originals", copies=2)
    ingest_paths(clinic, files.files)
    return files

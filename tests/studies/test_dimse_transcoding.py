"""C-MOVE and C-GET convert instances to a syntax the destination accepted (pixel data compared decoded)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from studies.dimse.move import send_syntax
from studies.ingest import instance_ingest
from tests.dicom_files import write_study
from tests.studies.dimse_support import DCMTK_BIN, HOST, MODALITY_AE, dcmtk, free_port, move, register_node

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("tasks_run_inline")]
UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.2"}

# Compressed samples, and a big endian one (whose pixel bytes must be swapped for little endian).
SAMPLES = [
    "MR_small_jp2klossless.dcm",
    "JPGExtended.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
]


@pytest.fixture
def study(clinic, tmp_path):
    files = write_study(tmp_path / "originals", samples=SAMPLES)
    for path in files.files:
        instance_ingest(clinic=clinic, source_path=str(path), source="test")
    return files


def _pixels_by_uid(paths) -> dict[str, np.ndarray]:
    return {str(dcmread(p).SOPInstanceUID): dcmread(p).pixel_array for p in paths}


def _assert_same_pixels(received: dict[str, np.ndarray], study) -> None:
    expected = _pixels_by_uid(study.files)
    assert set(received) == set(expected)
    for uid, pixels in received.items():
        assert np.array_equal(pixels, expected[uid]), uid


@pytest.mark.slow
def test_dcmtk_storescp_accepting_only_uncompressed_receives_a_jpeg2000_study_by_movescu(
    clinic, scp_port, study, tmp_path
):
    port = free_port()
    register_node(clinic, ae_title="STORESCP", port=port, allow_inbound=False)
    out = tmp_path / "received"
    out.mkdir()
    # storescp accepts only the uncompressed syntaxes unless told otherwise.
    receiver = subprocess.Popen(
        [str(DCMTK_BIN / "storescp"), "-aet", "STORESCP", "-od", str(out), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(0.5)
        result = dcmtk(
            "movescu", "-v", "-aet", MODALITY_AE, "-aem", "STORESCP", "-aec", clinic.ae_title, "-S",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}", HOST, scp_port,
        )  # fmt: skip
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)

    files = [p for p in Path(out).iterdir() if p.is_file()]
    assert result.returncode == 0, result.stdout + result.stderr
    assert {str(dcmread(p).file_meta.TransferSyntaxUID) for p in files} <= UNCOMPRESSED
    _assert_same_pixels(_pixels_by_uid(files), study)


def test_pynetdicom_destination_taking_only_explicit_little_endian_gets_every_instance(clinic, scp_port, study):
    received: dict[str, np.ndarray] = {}
    syntaxes: set[str] = set()

    def store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        syntaxes.add(str(event.context.transfer_syntax))
        received[str(ds.SOPInstanceUID)] = ds.pixel_array
        return 0x0000

    ae = AE(ae_title="VIEWER1")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, [ExplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    register_node(clinic, ae_title="VIEWER1", port=port, allow_inbound=False)
    try:
        statuses = move(
            scp_port, clinic.ae_title, "VIEWER1", QueryRetrieveLevel="STUDY", StudyInstanceUID=study.study_uid
        )
    finally:
        server.shutdown()

    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfFailedSuboperations == 0
    assert syntaxes == {ExplicitVRLittleEndian}
    _assert_same_pixels(received, study)


def test_c_get_in_implicit_little_endian_only_gets_every_instance_decoded(clinic, scp_port, study):
    received: dict[str, np.ndarray] = {}

    def store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds.pixel_array
        return 0x0000

    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    sop_classes = sorted({str(dcmread(p).SOPClassUID) for p in study.files})
    for sop_class in sop_classes:
        ae.add_requested_context(sop_class, [ImplicitVRLittleEndian])
    roles = [build_role(sop_class, scp_role=True) for sop_class in sop_classes]
    assoc = ae.associate(
        HOST, scp_port, ae_title=clinic.ae_title, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)]
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study.study_uid
    try:
        statuses = [status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()

    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfFailedSuboperations == 0
    _assert_same_pixels(received, study)


@pytest.mark.parametrize(
    ("stored", "accepted", "expected"),
    [
        ("1.2.840.10008.1.2.4.90", {"1.2.840.10008.1.2.4.90", ExplicitVRLittleEndian}, None),
        ("1.2.840.10008.1.2.4.90", {ImplicitVRLittleEndian}, ExplicitVRLittleEndian),
        (ImplicitVRLittleEndian, {ExplicitVRLittleEndian}, None),
        ("1.2.840.10008.1.2.2", {ExplicitVRLittleEndian}, ExplicitVRLittleEndian),
        (ExplicitVRLittleEndian, {"1.2.840.10008.1.2.4.90"}, "1.2.840.10008.1.2.4.90"),
        # A destination that takes only lossy JPEG gets nothing re-encoded lossily: the sub-operation fails.
        (ExplicitVRLittleEndian, {"1.2.840.10008.1.2.4.50"}, None),
    ],
)
def test_send_syntax_converts_only_when_needed_and_only_losslessly(stored, accepted, expected):
    assert send_syntax(stored=stored, accepted=accepted) == expected

"""Helpers for the DIMSE tests: the listener in-process on a free port, DCMTK runs, real DICOM files.

Ports come from 11200-11299 (this suite's range), so parallel runs of other suites don't collide; under
pytest-xdist each worker takes the next hundred, so a port one test has just freed (a peer stopped to
be "down") is never taken by a test of another worker.
"""

from __future__ import annotations

import collections
import contextlib
import random
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_role, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelMove

from studies.dimse import nodes
from studies.dimse.scp import STORAGE_TRANSFER_SYNTAXES, scp_start
from studies.ingest import instance_ingest
from studies.models import DicomNode
from tenants.models import Clinic
from tests.dicom_files import dataset_write, sample_dataset
from tests.workers import WORKER_INDEX

PORT_RANGE = range(11200 + 100 * WORKER_INDEX, 11300 + 100 * WORKER_INDEX)
HOST = "127.0.0.1"
MODALITY_AE = "MODALITY1"
VIEWER_AE = "VIEWER1"
DCMTK_TIMEOUT = 60


# Ports handed out lately: a caller often asks for two before binding either (a listener's plain and
# TLS ports), and both being free then made the same port come back for the two now and then.
_handed_out: collections.deque[int] = collections.deque(maxlen=len(PORT_RANGE) // 2)


def free_port() -> int:
    """Return a port in this suite's range that nothing listens on right now, and not handed out lately."""
    ports = [port for port in PORT_RANGE if port not in _handed_out]
    random.shuffle(ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            _handed_out.append(port)
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")


@contextlib.contextmanager
def running_scp() -> Iterator[int]:
    """Run the portal's DIMSE listener in this process; yield its port."""
    # The listener switches pynetdicom to receiving data sets into files, process-wide: undo it after.
    chunked = _config.STORE_RECV_CHUNKED_DATASET
    port = free_port()
    server = scp_start(host=HOST, port=port, ae_title="PACSPORTAL", block=False)
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()
        _config.STORE_RECV_CHUNKED_DATASET = chunked


@contextlib.contextmanager
def tasks_inline() -> Iterator[None]:
    """Run the Celery tasks ingest queues after commit in place, so nothing reaches a broker."""
    from portal.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    try:
        yield
    finally:
        app.conf.task_always_eager = previous


def register_node(clinic: Clinic, *, ae_title: str = MODALITY_AE, port: int = 104, **extra: object) -> DicomNode:
    return nodes.dicom_node_create(clinic=clinic, ae_title=ae_title, host=HOST, port=port, **extra)


DCMTK_BIN = Path("/usr/bin")


def dcmtk(*args: str | Path | int, check: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool and return its result (stdout and stderr as text).

    Named by its full path: pynetdicom installs Python tools of the same names (findscu, storescu...)
    into the virtual environment, which comes first on PATH under ``make test``.
    """
    command = [str(DCMTK_BIN / str(args[0])), *(str(a) for a in args[1:])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=DCMTK_TIMEOUT, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dataset_bytes(path: Path) -> bytes:
    """Return a Part 10 file's data set bytes, after its file meta group (which every writer redoes)."""
    data = Path(path).read_bytes()
    assert data[128:132] == b"DICM", path
    # (0002,0000) UL, explicit VR little endian: tag 4 + VR 2 + length 2, then the 4-byte group length.
    assert data[132:136] == b"\x02\x00\x00\x00", path
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]


# Sample files covering the storage transfer syntaxes: (pydicom sample, transfer syntax it is stored in).
SAMPLES = {
    "CT_small.dcm": "1.2.840.10008.1.2.1",  # explicit VR little endian
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",  # implicit VR little endian
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",  # RLE lossless
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "JPGExtended.dcm": "1.2.840.10008.1.2.4.51",  # JPEG extended
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
}

# Deflated data is re-compressed on the way out, so its bytes may differ; every other syntax is sent as stored.
BYTE_EXACT_SAMPLES = [name for name, syntax in SAMPLES.items() if syntax != "1.2.840.10008.1.2.1.99"]


class Receiver:
    """A pynetdicom storage SCP that keeps every data set it receives, as raw bytes, by SOP Instance UID."""

    def __init__(self, ae_title: str = VIEWER_AE) -> None:
        self.ae_title = ae_title
        self.received: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.port = free_port()
        ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
        self.server = ae.start_server((HOST, self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        try:
            data = dataset_bytes(Path(event.dataset_path))
        except AttributeError:
            data = event.encoded_dataset(include_meta=False)
        with self.lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = data
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


def storage_received(event: evt.Event, into: dict[str, bytes]) -> int:
    """A C-STORE handler for an SCU's own association (C-GET): keep the raw data set bytes."""
    try:
        data = dataset_bytes(Path(event.dataset_path))
    except AttributeError:
        data = event.encoded_dataset(include_meta=False)
    into[str(event.request.AffectedSOPInstanceUID)] = data
    return 0x0000


def store_with_pynetdicom(port: int, called: str, paths: list[Path]) -> list[int]:
    """Send files in their own transfer syntaxes over one association; return the C-STORE statuses."""
    ae = AE(ae_title=MODALITY_AE)
    for path in paths:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established
    try:
        return [assoc.send_c_store(path).Status for path in paths]
    finally:
        assoc.release()


def move(port: int, called: str, destination: str, model: str = StudyRootQueryRetrieveInformationModelMove,
         **keys: object) -> list[Dataset]:
    """Run one C-MOVE with pynetdicom; return every response status."""
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(model)
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established
    query = Dataset()
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    try:
        return [status for status, _ in assoc.send_c_move(query, destination, model)]
    finally:
        assoc.release()


def identifier(**keys: object) -> Dataset:
    """A C-FIND or C-MOVE identifier with these keywords' values."""
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def c_find(port: int, called: str, model: str, query: Dataset) -> tuple[list[Dataset], int | None]:
    """Run one C-FIND with pynetdicom as the test modality; return the matches and the final status."""
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(model)
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established
    matches, final = [], None
    try:
        for status, answer in assoc.send_c_find(query, model):
            if status.Status in (0xFF00, 0xFF01):
                matches.append(answer)
            else:
                final = status.Status
    finally:
        assoc.release()
    return matches, final


def ingest_paths(clinic: Clinic, paths: list[Path]) -> None:
    """Store files as an upload does (the index and objects a listener then answers from)."""
    for path in paths:
        instance_ingest(clinic=clinic, source_path=str(path), source="test")


def write_named(folder: Path, *, name: str, charset: str, patient_id: str = "PID-U") -> Path:
    """A CT instance of its own study whose Patient Name is written in ``charset``."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = sample_dataset("CT_small.dcm", PatientName=name, PatientID=patient_id, StudyInstanceUID=generate_uid(),
                        SeriesInstanceUID=generate_uid(), SpecificCharacterSet=charset)
    return dataset_write(ds, folder / f"{patient_id}.dcm")


def encoded(ds: Dataset, *, implicit: bool) -> bytes:
    """The data set's bytes in little endian, implicit or explicit VR, without File Meta."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def raw_store(port: int, called: str, tmp: Path, *, sop_class: str, sop_uid: str, data: bytes,
              syntax: str = ExplicitVRLittleEndian, context_class: str | None = None) -> int:
    """Send one C-STORE whose data set is the given bytes, as they are (pynetdicom streams them from a file
    whose File Meta names the Affected SOP Class/Instance UIDs); return the response status."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = context_class or sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.3.4"
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta)
    path = tmp / f"{generate_uid()}.dcm"
    path.write_bytes(fp.getvalue() + data)
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(context_class or sop_class, [syntax])
    assoc = ae.associate(HOST, port, ae_title=called)
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
        assert "Status" in status, "no C-STORE response"
        return int(status.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


def c_get(port: int, called: str, model: str, **keys: object) -> tuple[dict[str, bytes], list[int]]:
    """Run one C-GET with pynetdicom (CT sub-operations back on the same association); return what came
    back, by SOP Instance UID, and every response status."""
    received: dict[str, bytes] = {}
    ae = AE(ae_title=MODALITY_AE)
    ae.add_requested_context(model)
    ae.add_requested_context(CTImageStorage)
    handlers = [(evt.EVT_C_STORE, lambda event: storage_received(event, received))]
    assoc = ae.associate(HOST, port, ae_title=called, ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=handlers)
    assert assoc.is_established
    try:
        statuses = [s.Status for s, _ in assoc.send_c_get(identifier(**keys), model) if "Status" in s]
    finally:
        assoc.release()
    return received, statuses

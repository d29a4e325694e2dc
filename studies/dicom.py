"""Read and validate one DICOM file: the only module (with DIMSE and anonymization) that imports pydicom.

``parse_instance`` turns an untrusted file into a :class:`ParsedInstance` of plain, validated values, or
raises :class:`~studies.errors.InvalidDicom` with a reason a person can read. It never holds pixel data in
memory: pydicom reads the header (``stop_before_pixels``), and a small structural walker of our own checks
that every element of the file, pixel data included, fits in the file and is well formed, so a truncated
or malformed file is refused before anything is stored.

Metadata is the header as DICOM JSON (PS3.18 F.2). Pixel data and other large values are left out and
marked with a ``BulkDataURI`` placeholder whose value is the element's tag in hex (``"7FE00010"``; for
values inside sequences, the nested element's own tag); the DICOMweb layer rewrites placeholders into
real URIs when it answers. The transfer syntax is kept as ``00020010``.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mmap
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, time
from functools import lru_cache
from typing import IO, Any, BinaryIO, Protocol

import pydicom
import pydicom.config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from studies.errors import DicomDirectory, InvalidDicom, NotDicom

logger = logging.getLogger(__name__)

# Header values are untrusted and often slightly off; we validate what we use ourselves, so pydicom's
# per-value warnings on read would only flood the logs.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

__all__ = ["ParsedInstance", "parse_instance", "is_valid_uid", "BULK_DATA_THRESHOLD"]

# Binary values larger than this are left out of the JSON metadata (PS3.18 allows BulkDataURI instead).
BULK_DATA_THRESHOLD = 1024
# Any value larger than this is left out of the metadata whatever its VR, so one hostile element can't
# bloat the index.
MAX_INLINE_VALUE = 64 * 1024
# Values above this stay on disk while pydicom reads the header (fetched only if we ask for them).
_DEFER_SIZE = 256 * 1024
# Sequences nested deeper than this are refused: real SR trees stay far below it, fuzzers don't.
MAX_SEQUENCE_DEPTH = 64
# A deflated dataset is inflated in memory to be checked; cap it against decompression bombs.
MAX_INFLATED_BYTES = 64 * 1024 * 1024
# Headers (everything but pixel data) above these limits are refused: pydicom holds the header in memory.
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_ELEMENTS = 250_000

_REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_DEFLATED_TS = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.204"}
_NATIVE_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"

_PHOTOMETRIC = {
    "MONOCHROME1",
    "MONOCHROME2",
    "PALETTE COLOR",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
    "ARGB",
    "CMYK",
    "HSV",
    "XYB",
}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}


def is_valid_uid(value: str) -> bool:
    """Say whether ``value`` is a syntactically valid DICOM UID (PS3.5 9.1), at most 64 characters."""
    return 0 < len(value) <= 64 and _UID_RE.match(value) is not None


@dataclass(frozen=True)
class ParsedInstance:
    """What the index needs from one instance: plain values, UIDs validated, no pydicom objects."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_sex: str = ""
    patient_birth_date: date | None = None
    study_date: date | None = None
    study_time: time | None = None
    accession_number: str = ""
    study_description: str = ""
    study_id: str = ""
    referring_physician_name: str = ""
    modality: str = ""
    series_description: str = ""
    body_part_examined: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    number_of_frames: int = 1
    rows: int | None = None
    columns: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class _PixelInfo:
    tag: int
    vr: str
    length: int | None  # None: encapsulated (undefined length)
    fragments: int = 0


@dataclass
class _Layout:
    """What the structural walk found at the top level of the dataset."""

    pixel: _PixelInfo | None = None
    header_bytes: int = 0
    encoding: tuple[bool, bool] | None = None  # (implicit VR, little endian) when guessed, not declared


def parse_instance(path_or_file: str | os.PathLike[str] | IO[bytes]) -> ParsedInstance:
    """Parse and validate one DICOM file.

    Parameters
    ----------
    path_or_file
        A path, or a binary file object (read from its start; copied to a temporary file first when it
        has no path on disk).

    Returns
    -------
    ParsedInstance

    Raises
    ------
    InvalidDicom
        The file is not DICOM (:class:`NotDicom`), is a DICOMDIR (:class:`DicomDirectory`), or is
        truncated or malformed; the message says why.
    """
    with _as_path(path_or_file) as path:
        try:
            return _parse_path(path)
        except InvalidDicom:
            raise
        except RecursionError:
            raise InvalidDicom("The file is malformed: its sequences are nested too deeply.") from None
        # Hostile files make pydicom fail in many ways (struct, value, key, unicode, overflow errors...).
        # Every one of them means the same thing to the uploader: this file can't be read.
        except Exception as exc:  # noqa: BLE001
            raise InvalidDicom(f"The file is malformed and can't be read as DICOM ({type(exc).__name__}).") from None


@contextmanager
def _as_path(path_or_file: str | os.PathLike[str] | IO[bytes]) -> Iterator[str]:
    if isinstance(path_or_file, (str, os.PathLike)):
        yield os.fspath(path_or_file)
        return
    name = getattr(path_or_file, "name", None)
    if isinstance(name, str) and os.path.isfile(name):
        yield name
        return
    # pydicom reads deferred values back through the file name, so a nameless stream goes to disk first.
    with tempfile.NamedTemporaryFile(prefix="dicom-", suffix=".dcm") as tmp:
        path_or_file.seek(0)
        shutil.copyfileobj(path_or_file, tmp, 1024 * 1024)
        tmp.flush()
        yield tmp.name


def _parse_path(path: str) -> ParsedInstance:
    file_size = os.path.getsize(path)
    if file_size == 0:
        raise NotDicom("The file is empty.")
    with open(path, "rb") as fp:
        head = fp.read(132)
    has_preamble = len(head) == 132 and head[128:132] == b"DICM"
    if not has_preamble and not _looks_like_bare_dataset(head):
        raise NotDicom("Not a DICOM file: it has no DICOM header.")

    # Our own structural check first: pydicom then only ever sees a well-formed, bounded header.
    layout, declared = _walk_file(path, file_size, has_preamble)
    if layout.header_bytes > MAX_HEADER_BYTES:
        raise InvalidDicom("The file's header is too large; it is refused.")
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, defer_size=_DEFER_SIZE, stop_before_pixels=True, force=not has_preamble)
    meta = ds.file_meta if hasattr(ds, "file_meta") else Dataset()

    media_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    if media_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise DicomDirectory("This is a DICOMDIR (the index of a CD or DVD), not an image: skipped.")

    transfer_syntax = _transfer_syntax(ds, meta)
    if layout.encoding is not None and tuple(ds.original_encoding) != layout.encoding:
        raise InvalidDicom("The file is malformed: its encoding can't be worked out reliably.")

    # The header first, while the dataset is still as read: the JSON is then written from raw bytes for
    # every plain element, and the values read below come from that JSON when their element was plain.
    plain: dict[int, dict[str, Any]] = {}
    metadata = _metadata(ds, layout, meta, plain=plain)
    values = _PlainFirst(ds, plain)

    uids = {}
    for keyword, label in (
        ("SOPInstanceUID", "SOP Instance UID"),
        ("SOPClassUID", "SOP Class UID"),
        ("StudyInstanceUID", "Study Instance UID"),
        ("SeriesInstanceUID", "Series Instance UID"),
    ):
        value = _text(values, keyword, 1000)
        if not value:
            if not has_preamble and len(meta) == 0 and not any(k in ds for k in _REQUIRED_UIDS):
                raise NotDicom("Not a DICOM file: it has no DICOM header.")
            raise InvalidDicom(f"The file has no {label}.")
        if not is_valid_uid(value):
            raise InvalidDicom(f"The file's {label} is not a valid UID.")
        uids[keyword] = value

    # The dataset's own UIDs are authoritative: file meta that disagrees (common after tag editing by
    # other tools) is not a reason to refuse an otherwise valid file.
    rows = _int(values, "Rows")
    columns = _int(values, "Columns")
    frames = _int(values, "NumberOfFrames")
    if frames is not None and frames < 1:
        raise InvalidDicom("The file is malformed: Number of Frames is less than 1.")
    if layout.pixel is not None:
        _check_pixel_data(values, layout.pixel, transfer_syntax, rows, columns, frames or 1)

    return ParsedInstance(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        patient_id=_text(values, "PatientID", 64),
        issuer_of_patient_id=_text(values, "IssuerOfPatientID", 64),
        patient_name=_text(values, "PatientName", 324),
        patient_sex=_text(values, "PatientSex", 16),
        patient_birth_date=_date(values, "PatientBirthDate"),
        study_date=_date(values, "StudyDate"),
        study_time=_time(values, "StudyTime"),
        accession_number=_text(values, "AccessionNumber", 64),
        study_description=_text(values, "StudyDescription", 128),
        study_id=_text(values, "StudyID", 16),
        referring_physician_name=_text(values, "ReferringPhysicianName", 324),
        modality=_text(values, "Modality", 16),
        series_description=_text(values, "SeriesDescription", 128),
        body_part_examined=_text(values, "BodyPartExamined", 64),
        series_number=_int(values, "SeriesNumber"),
        instance_number=_int(values, "InstanceNumber"),
        number_of_frames=frames or 1,
        rows=rows,
        columns=columns,
        metadata=metadata,
    )


def data_set_digest(fileobj: IO[bytes]) -> str:
    """Return the SHA-256 of a Part 10 file's data set, leaving out its preamble and File Meta group.

    Two senders of the same image write different File Meta (Implementation Class UID and Version,
    Source AE Title), so "the same content" is judged on the data set alone. Reads ``fileobj`` from its
    start to its end; raises InvalidDicom if the File Meta group is malformed.
    """
    fileobj.seek(0, os.SEEK_END)
    size = fileobj.tell()
    fileobj.seek(0)
    head = fileobj.read(132)
    if not (len(head) == 132 and head[128:132] == b"DICM"):
        fileobj.seek(0)
    _skip_file_meta(fileobj, size)  # type: ignore[arg-type]
    digest = hashlib.sha256()
    while chunk := fileobj.read(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def _looks_like_bare_dataset(head: bytes) -> bool:
    """Say whether a file without preamble starts like a DICOM dataset (group 0002 or 0008 first)."""
    if len(head) < 8:
        return False
    group_le = struct.unpack_from("<H", head, 0)[0]
    group_be = struct.unpack_from(">H", head, 0)[0]
    return group_le in (0x0002, 0x0008) or group_be in (0x0002, 0x0008)


def _transfer_syntax(ds: Dataset, meta: Dataset) -> str:
    declared = str(meta.get("TransferSyntaxUID", "") or "").rstrip("\x00 ")
    if declared:
        if not is_valid_uid(declared):
            raise InvalidDicom("The file's transfer syntax is not a valid UID.")
        return declared
    # No file meta: pydicom worked out the encoding from the first bytes.
    implicit, little = ds.original_encoding
    if implicit:
        return _IMPLICIT_LE
    return _EXPLICIT_LE if little else _EXPLICIT_BE


def _walk_file(path: str, file_size: int, has_preamble: bool) -> tuple[_Layout, str]:
    """Check the whole file's element structure without reading values; return it and the declared syntax."""
    with open(path, "rb") as fp:
        fp.seek(132 if has_preamble else 0)
        declared = _skip_file_meta(fp, file_size)
        start = fp.tell()
        if declared in _DEFLATED_TS:
            # pydicom inflates a deflated dataset whole, in memory: measure it first (decompression bombs).
            _check_inflated_size(fp)
            fp.seek(start)
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            data = inflater.decompress(fp.read(), MAX_INFLATED_BYTES)
            walker = _Walker(data, len(data), implicit=False, little=True)
            return walker.walk_top_level(0), declared
        if declared:
            implicit, little = declared == _IMPLICIT_LE, declared != _EXPLICIT_BE
        else:
            implicit, little = _guess_encoding(fp.read(8))
        # Mapped, not read: the walk touches only element headers, so pixel data never comes into memory.
        with mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            walker = _Walker(mapped, file_size, implicit=implicit, little=little)
            layout = walker.walk_top_level(start)
        layout.encoding = (implicit, little)
        return layout, declared


def _guess_encoding(first: bytes) -> tuple[bool, bool]:
    """Guess (implicit VR, little endian) of a dataset without declared transfer syntax, like pydicom."""
    if len(first) < 8:
        return True, True
    little = struct.unpack_from("<H", first, 0)[0] <= struct.unpack_from(">H", first, 0)[0]
    explicit = first[4:6].isalpha() and first[4:6].isupper()
    return not explicit, little


def _check_inflated_size(fp: BinaryIO) -> None:
    """Inflate the rest of ``fp`` piece by piece, refusing it if it would pass MAX_INFLATED_BYTES."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail or fp.read(1024 * 1024)
            if not data:
                raise InvalidDicom("The file is truncated: its deflated dataset ends early.")
            total += len(inflater.decompress(data, 1024 * 1024))
            if total > MAX_INFLATED_BYTES:
                raise InvalidDicom("The deflated dataset is too large to be checked.")
    except zlib.error:
        raise InvalidDicom("The file is malformed: its deflated dataset is corrupt.") from None


def _skip_file_meta(fp: BinaryIO, file_size: int) -> str:
    """Move past group 0002 (always explicit VR little endian), checking each element fits.

    Returns the declared transfer syntax UID ("" when there is none).
    """
    transfer_syntax = ""
    while True:
        start = fp.tell()
        header = fp.read(6)
        if len(header) < 6 or struct.unpack_from("<H", header, 0)[0] != 0x0002:
            fp.seek(start)
            return transfer_syntax
        vr = header[4:6]
        if vr in _LONG_VRS:
            rest = fp.read(6)
            if len(rest) < 6:
                raise InvalidDicom("The file is truncated inside its meta information.")
            length = struct.unpack_from("<I", rest, 2)[0]
        elif vr.isalpha() and vr.isupper():
            rest = fp.read(2)
            if len(rest) < 2:
                raise InvalidDicom("The file is truncated inside its meta information.")
            length = struct.unpack_from("<H", rest, 0)[0]
        else:
            raise InvalidDicom("The file's meta information is malformed.")
        if length == _UNDEFINED or fp.tell() + length > file_size:
            raise InvalidDicom("The file is truncated or malformed inside its meta information.")
        if struct.unpack_from("<H", header, 2)[0] == 0x0010 and length <= 64:
            transfer_syntax = fp.read(length).decode("ascii", "replace").rstrip("\x00 ")
        else:
            fp.seek(length, os.SEEK_CUR)


class _Walker:
    """Walk DICOM elements by their headers, stepping over values, so any file size costs little memory.

    Sequences are walked down to their items' elements (defined or undefined length), every length is
    checked against the file and its enclosing item, and elements are counted, so a file pydicom would
    need gigabytes to represent is refused before pydicom sees it. ``buffer`` is the file mapped in memory
    (or an inflated dataset); positions are plain integers, which keeps the walk cheap per element.
    """

    def __init__(self, buffer: bytes | mmap.mmap, size: int, *, implicit: bool, little: bool) -> None:
        self.buffer = buffer
        self.size = size
        self.pos = 0
        self.implicit = implicit
        endian = "<" if little else ">"
        self._explicit_header = struct.Struct(endian + "HH2sH")
        self._tag_and_length = struct.Struct(endian + "HHI")
        self._long_length = struct.Struct(endian + "I")
        self.elements = 0

    def _element_header(self, where: str) -> tuple[int, str, int]:
        self.elements += 1
        if self.elements > MAX_ELEMENTS:
            raise InvalidDicom(f"The file's header has more than {MAX_ELEMENTS} elements; it is refused.")
        pos = self.pos
        if pos + 8 > self.size:
            raise InvalidDicom(f"The file is truncated {where}.")
        group, element, vr_bytes, short_length = self._explicit_header.unpack_from(self.buffer, pos)
        tag = (group << 16) | element
        self.pos = pos + 8
        if group == 0xFFFE or self.implicit:
            length = self._tag_and_length.unpack_from(self.buffer, pos)[2]
            return tag, "" if group == 0xFFFE else _dictionary_vr_or_un(tag), length
        if vr_bytes in _LONG_VRS:
            if pos + 12 > self.size:
                raise InvalidDicom(f"The file is truncated {where}.")
            self.pos = pos + 12
            return tag, vr_bytes.decode("ascii"), self._long_length.unpack_from(self.buffer, pos + 8)[0]
        if vr_bytes.isalpha() and vr_bytes.isupper():
            return tag, vr_bytes.decode("ascii"), short_length
        raise InvalidDicom("The file is malformed: an element has an invalid value representation.")

    def walk_top_level(self, start: int) -> _Layout:
        layout = _Layout()
        self.pos = start
        previous = -1
        where = "in its dataset"
        while self.pos < self.size:
            if self.size - self.pos < 8:
                raise InvalidDicom("The file is truncated: it ends inside an element header.")
            element_start = self.pos
            tag, vr, length = self._element_header(where)
            if tag >> 16 == 0xFFFE:
                if tag == _ITEM_DELIMITER and length == 0 and previous == -1:
                    continue  # some writers emit a stray empty delimiter; harmless
                raise InvalidDicom("The file is malformed: a delimiter stands outside any sequence.")
            if tag <= previous:
                raise InvalidDicom("The file is malformed: its elements are repeated or out of order.")
            previous = tag
            if tag in _PIXEL_DATA_TAGS:
                if layout.pixel is None:
                    layout.header_bytes = element_start - start
                if length == _UNDEFINED:
                    layout.pixel = _PixelInfo(tag, "OB", None, self._walk_fragments())
                else:
                    self._skip(length, self.size, "inside its pixel data")
                    # Implicit VR leaves the VR to the dictionary ("OB or OW"): native pixel data reads as OW.
                    layout.pixel = _PixelInfo(tag, "OW" if self.implicit else vr, length)
                where = "after its pixel data"
                continue
            self._value(vr, length, depth=0, end=self.size, where=where)
        if layout.pixel is None:
            layout.header_bytes = self.size - start
        return layout

    def _skip(self, length: int, end: int, where: str) -> None:
        if self.pos + length > min(end, self.size):
            raise InvalidDicom(f"The file is truncated or malformed {where}.")
        self.pos += length

    def _value(self, vr: str, length: int, *, depth: int, end: int, where: str) -> None:
        if length == _UNDEFINED:
            if vr not in ("SQ", "UN"):
                raise InvalidDicom("The file is malformed: a value of undefined length is not a sequence.")
            self._sequence(depth=depth + 1, end=None)
        elif vr == "SQ":
            if self.pos + length > min(end, self.size):
                raise InvalidDicom(f"The file is truncated or malformed {where}.")
            self._sequence(depth=depth + 1, end=self.pos + length)
        else:
            self._skip(length, end, where)

    def _sequence(self, *, depth: int, end: int | None) -> None:
        if depth > MAX_SEQUENCE_DEPTH:
            raise InvalidDicom("The file is malformed: its sequences are nested too deeply.")
        where = "inside a sequence"
        while end is None or self.pos < end:
            tag, _, length = self._element_header(where)
            if tag == _SEQUENCE_DELIMITER and end is None:
                return
            if tag != _ITEM:
                raise InvalidDicom("The file is malformed: a sequence holds something other than items.")
            if length == _UNDEFINED:
                self._item(depth=depth, end=None, outer=end)
            else:
                item_end = self.pos + length
                if item_end > min(end if end is not None else self.size, self.size):
                    raise InvalidDicom(f"The file is truncated or malformed {where}.")
                self._item(depth=depth, end=item_end, outer=end)
        if self.pos != end:
            raise InvalidDicom("The file is malformed: a sequence overruns its length.")

    def _item(self, *, depth: int, end: int | None, outer: int | None) -> None:
        where = "inside a sequence item"
        limit = end if end is not None else (outer if outer is not None else self.size)
        while end is None or self.pos < end:
            tag, vr, length = self._element_header(where)
            if tag == _ITEM_DELIMITER and end is None:
                return
            if tag >> 16 == 0xFFFE:
                raise InvalidDicom("The file is malformed: a sequence item is not closed properly.")
            self._value(vr, length, depth=depth, end=limit, where=where)
        if self.pos != end:
            raise InvalidDicom("The file is malformed: a sequence item overruns its length.")

    def _walk_fragments(self) -> int:
        where = "inside its pixel data"
        fragments = 0
        while True:
            if self.pos + 8 > self.size:
                raise InvalidDicom(f"The file is truncated {where}.")
            group, element, length = self._tag_and_length.unpack_from(self.buffer, self.pos)
            self.pos += 8
            tag = (group << 16) | element
            if tag == _SEQUENCE_DELIMITER:
                return fragments
            if tag != _ITEM or length == _UNDEFINED:
                raise InvalidDicom("The file is malformed: its compressed pixel data is not a list of fragments.")
            self._skip(length, self.size, where)
            fragments += 1


@lru_cache(maxsize=4096)
def _dictionary_vr_or_un(tag: int) -> str:
    """The VR the walker assumes for an implicit-VR element: the dictionary's, else UN."""
    try:
        return str(dictionary_VR(Tag(tag)))
    except KeyError:
        return "UN"


def _check_pixel_data(
    ds: _Values, pixel: _PixelInfo, transfer_syntax: str, rows: int | None, columns: int | None, frames: int
) -> None:
    if not rows or not columns:
        raise InvalidDicom("The file is malformed: it has pixel data but no image size (Rows/Columns).")
    if pixel.tag == 0x7FE00010 and _text(ds, "PhotometricInterpretation", 64) not in _PHOTOMETRIC:
        raise InvalidDicom("The file is malformed: its Photometric Interpretation is missing or unknown.")
    if pixel.length is None:
        # Basic Offset Table item first, then at least one fragment.
        if pixel.fragments < 2:
            raise InvalidDicom("The file is malformed: its compressed pixel data has no image fragments.")
        return
    if transfer_syntax not in _NATIVE_TS:
        raise InvalidDicom("The file is malformed: compressed pixel data must be encapsulated.")
    if pixel.tag != 0x7FE00010:
        return
    bits = _int(ds, "BitsAllocated")
    samples = _int(ds, "SamplesPerPixel") or 1
    if bits not in (1, 8, 16, 32, 64):
        raise InvalidDicom("The file is malformed: Bits Allocated is missing or not a supported value.")
    if samples not in (1, 3, 4):
        raise InvalidDicom("The file is malformed: Samples per Pixel is not a supported value.")
    expected_bits = rows * columns * samples * frames * bits
    if _text(ds, "PhotometricInterpretation", 32) == "YBR_FULL_422":
        expected_bits = expected_bits * 2 // 3
    expected = (expected_bits + 7) // 8
    if pixel.length < expected:
        raise InvalidDicom(
            "The file is truncated or malformed: its pixel data is shorter than the image size in its header."
        )


def _metadata(
    ds: Dataset, layout: _Layout, meta: Dataset, *, plain: dict[int, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Return the header as DICOM JSON, large values replaced by BulkDataURI placeholders.

    Plain elements, in sequence items too, are written straight from their raw bytes (:func:`_fast_json`):
    pydicom's generic path (convert to a DataElement, store it back in the dataset, then ``to_json_dict``)
    cost about three quarters of the parse. What the fast path does not handle exactly (UN, AT, ambiguous
    VRs, non-ASCII or escaped text, deferred values, malformed numbers) goes through pydicom as before.
    ``plain``, when given, receives the top-level elements written by the fast path (tag to JSON).
    """
    result: dict[str, Any] = {}
    for tag, raw in list(ds._dict.items()):
        key = _tag_key(tag)
        # The bulk decision is on the element as read: its declared VR (none when implicit) and length.
        declared = str(raw.VR or "")
        if isinstance(raw, RawDataElement):
            length = int(raw.length)
        else:
            length = len(raw.value) if isinstance(raw.value, (bytes, str)) else 0
        if length > MAX_INLINE_VALUE or (declared in _BINARY_VRS and length > BULK_DATA_THRESHOLD):
            result[key] = {"vr": declared if declared and declared != "UN" else "UN", "BulkDataURI": key}
            continue
        # Element by element rather than to_json_dict(suppress_invalid_tags=True): that flag switches a
        # process-wide pydicom setting without a lock, and parallel ingests left it on "raise".
        try:
            fast = _fast_element(tag, raw, key)
            if fast is not None:
                result[key] = fast
                if plain is not None:
                    plain[int(tag)] = fast
                continue
            result[key] = _element_json(ds, tag, raw, key)
        except Exception:  # noqa: BLE001 - a value DICOM JSON cannot express stays out of the index copy
            logger.warning("Element %s left out of the DICOM JSON header: it cannot be expressed", key)
    if layout.pixel is not None:
        key = f"{layout.pixel.tag:08X}"
        result[key] = {"vr": layout.pixel.vr, "BulkDataURI": key}
    # Keep the transfer syntax next to the header: WADO-RS metadata reports it (0002,0010).
    ts = meta.get("TransferSyntaxUID")
    if ts:
        result["00020010"] = {"vr": "UI", "Value": [str(ts)]}
    return dict(sorted(result.items()))


def _element_json(ds: Dataset, tag: int, raw: Any, key: str) -> dict[str, Any]:
    """One element of ``ds`` as DICOM JSON: from its raw bytes when plain, else as pydicom writes it.

    Sequences are written item by item here, each item as pydicom's ``Dataset.to_json_dict`` would (its
    elements in order, no bulk-size placeholders, any error failing the whole sequence), so that the
    plain elements inside them take the fast path too.
    """
    fast = _fast_element(tag, raw, key)
    if fast is not None:
        return fast
    element = ds[tag]
    if element.VR == "SQ":
        return {"vr": "SQ", "Value": [_item_json(item) for item in element.value]}
    json_element: dict[str, Any] = element.to_json_dict(
        bulk_data_element_handler=_bulk_uri, bulk_data_threshold=BULK_DATA_THRESHOLD
    )
    return json_element


def _fast_element(tag: int, raw: Any, key: str) -> dict[str, Any] | None:
    """The element as DICOM JSON from its raw bytes when it is plain (see ``_fast_json``), else None."""
    if isinstance(raw, RawDataElement) and raw.value is not None:
        vr = raw.VR or _implicit_vr(tag)
        if vr in _FAST_VRS:
            return _fast_json(vr, raw.value, raw.is_little_endian, tag, key)
    return None


class _Values(Protocol):
    """What the value readers (``_text``, ``_int``...) ask of a header: a Dataset, or ``_PlainFirst``."""

    def get(self, keyword: str) -> Any: ...


class _PlainFirst:
    """``get(keyword)`` as a Dataset answers it, from the header's JSON when the element was plain.

    The index's values (UIDs, patient, study and series fields, image size) are the header's plain
    elements in nearly every file: read from the JSON already written from their bytes (which gives what
    pydicom converts them to), they cost a dictionary lookup instead of pydicom's conversion, about a
    third of the parse. Any other element is asked of the dataset, as before.
    """

    def __init__(self, ds: Dataset, plain: dict[int, dict[str, Any]]) -> None:
        self._ds = ds
        self._plain = plain

    def get(self, keyword: str) -> Any:
        tag = _keyword_tag(keyword)
        found = self._plain.get(tag) if tag is not None else None
        if found is None or found["vr"] not in _PLAIN_VALUE_VRS:
            return self._ds.get(keyword)
        values = found.get("Value")
        if not values:
            return None
        if found["vr"] == "PN":
            values = [value["Alphabetic"] for value in values]
        return values[0] if len(values) == 1 else values


@lru_cache(maxsize=256)
def _keyword_tag(keyword: str) -> int | None:
    return tag_for_keyword(keyword)


def _item_json(item: Dataset) -> dict[str, Any]:
    return {_tag_key(tag): _element_json(item, tag, raw, _tag_key(tag)) for tag, raw in list(item._dict.items())}


# --- DICOM JSON straight from raw bytes ---------------------------------------------------------------
# Each branch reproduces what pydicom's convert_value + DataElement.to_json_dict give for the same bytes
# (PS3.18 F.2), for the cases where that is simple; anything else returns None and takes pydicom's path.
# tests/studies/test_dicom_json.py pins the result against golden JSON and pydicom's own reading.
_STRING_VRS = frozenset({"AS", "CS", "DA", "DT", "TM"})  # convert_string: rstrip " \0", split on "\"
_TEXT_VRS = frozenset({"SH", "LO", "UC"})  # convert_text: split on "\", rstrip "\0 " each
_SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})  # convert_single_string: no split
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_INLINE_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
_FAST_VRS = (
    _STRING_VRS | _TEXT_VRS | _SINGLE_TEXT_VRS | _INLINE_BINARY_VRS | set(_NUMBER_FORMATS)
    | {"AE", "UI", "UR", "IS", "DS", "PN"}
)
# The VRs whose JSON values read back as pydicom's own (text, and integers from binary). Not DS or IS
# (pydicom keeps the number's text: "20250101" under a wrong DS VR is a date to it) nor binary VRs.
_PLAIN_VALUE_VRS = (
    _STRING_VRS | _TEXT_VRS | _SINGLE_TEXT_VRS | {"AE", "UI", "UR", "PN", "US", "SS", "UL", "SL", "UV", "SV"}
)
# pydicom rewrites the first value of these (US or SS) descriptors: left to it.
_LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002, 0x00289422, 0x00660010})
# Bytes after which ASCII text may decode differently under a declared character set (ISO 2022 escapes).
_CODE_EXTENSION = re.compile(rb"[\x1b\x0e\x0f]")
_DS_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\Z")
_IS_RE = re.compile(r"[+-]?\d+\Z")
# pydicom's own limit for inline binary: a base64 text of at most BULK_DATA_THRESHOLD characters.
_INLINE_BINARY_MAX = (BULK_DATA_THRESHOLD // 4) * 3


@lru_cache(maxsize=4096)
def _tag_key(tag: int) -> str:
    return f"{int(tag):08X}"


@lru_cache(maxsize=4096)
def _implicit_vr(tag: int) -> str:
    """The VR pydicom gives an implicit-VR element, when it is plain; "" sends the element down its path."""
    if (tag >> 16) % 2 == 1 or tag in _LUT_DESCRIPTORS:
        return ""
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return ""
    return vr if vr in _FAST_VRS else ""


def _bulk_uri(element: Any) -> str:
    return f"{int(element.tag):08X}"


def _fast_json(vr: str, value: bytes, little: bool, tag: int, key: str) -> dict[str, Any] | None:
    if not value:
        return {"vr": vr}
    if vr in _INLINE_BINARY_VRS:
        if len(value) > _INLINE_BINARY_MAX:
            return {"vr": vr, "BulkDataURI": key}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    number_format = _NUMBER_FORMATS.get(vr)
    if number_format is not None:
        if tag in _LUT_DESCRIPTORS:
            return None
        size = struct.calcsize("=" + number_format)
        if len(value) % size:
            return None
        numbers = struct.unpack(f"{'<' if little else '>'}{len(value) // size}{number_format}", value)
        cast = float if vr in ("FL", "FD") else int
        return {"vr": vr, "Value": [cast(n) for n in numbers]}
    if not value.isascii() or _CODE_EXTENSION.search(value):
        return None
    text = value.decode("ascii")
    items: list[str]
    if vr in _TEXT_VRS:
        items = [item.rstrip("\0 ") for item in text.split("\\")]
    elif vr in _SINGLE_TEXT_VRS:
        items = [text.rstrip("\0 ")]
    elif vr == "UR":
        items = [text.rstrip()]
    elif vr == "AE":
        items = [item.strip() for item in text.split("\\")]
    elif vr == "UI":
        items = text.rstrip("\0 ").split("\\")
    elif vr == "DS":
        items = text.strip().rstrip(" \x00").split("\\")
        if not all(_DS_RE.match(item) for item in items):
            return None
        return {"vr": vr, "Value": [float(item) for item in items]}
    elif vr == "IS":
        items = text.rstrip(" \x00").split("\\")
        if not all(_IS_RE.match(item) for item in items):
            return None
        return {"vr": vr, "Value": [int(item) for item in items]}
    elif vr == "PN":
        items = text.rstrip("\0 ").split("\\")
        if not all(items) or "=" in text:
            return None
        return {"vr": vr, "Value": [{"Alphabetic": item} for item in items]}
    else:  # _STRING_VRS
        items = text.rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return {"vr": vr}
    return {"vr": vr, "Value": items}


def _text(ds: _Values, keyword: str, max_length: int) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a badly encoded value is treated as absent
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    elif isinstance(value, bytes):
        text = value.decode("ascii", "replace")
    else:
        text = str(value)
    return text.replace("\x00", "").strip()[:max_length]


def _int(ds: _Values, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0]
        number = int(value)
    except Exception:  # noqa: BLE001 - an unreadable number is treated as absent
        return None
    return number if -(2**31) <= number < 2**31 else None


def _date(ds: _Values, keyword: str) -> date | None:
    text = _text(ds, keyword, 32).replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _time(ds: _Values, keyword: str) -> time | None:
    text = _text(ds, keyword, 32).replace(":", "")
    match = re.match(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$", text)
    if not match:
        return None
    hour, minute, second, fraction = match.groups()
    try:
        return time(
            int(hour),
            int(minute or 0),
            min(int(second or 0), 59),
            int((fraction or "0").ljust(6, "0")),
        )
    except ValueError:
        return None

"""The DICOM JSON header parse_instance keeps (PS3.18 F.2), built from raw bytes for speed (issue 12).

Two kinds of check. Golden files pin the exact header (and the index fields) of representative files:
they were written by the former generic pydicom path (every element through ``to_json_dict``) before the
fast path replaced it, so they hold the new code to byte-identical output, key order included. And a
property over every readable file of the test data: the header read back with pydicom's
``Dataset.from_json`` gives the same values as pydicom reading the file itself.
"""

from __future__ import annotations

import json
import math
import warnings
from datetime import date, time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from studies.dicom import ParsedInstance, parse_instance
from studies.errors import InvalidDicom
from tests.dicom_files import EDGE_DIR, sample_path

GOLDEN = Path(__file__).parent / "golden"

# name -> how to get the file: a pydicom sample, a pydicom charset file, or one written by varied_instance.
GOLDEN_FILES = {
    "CT_small.dcm": "sample",  # a scanner's header: private tags, a sequence, IS/DS, US/SL
    "MR_small_implicit.dcm": "sample",
    "MR_small_bigendian.dcm": "sample",
    "image_dfl.dcm": "sample",  # deflated
    "test-SR.dcm": "sample",  # nested SR content sequences
    "reportsi_with_empty_number_tags.dcm": "sample",
    "rtplan.dcm": "sample",  # sequences in sequences
    "waveform_ecg.dcm": "sample",
    "chrX1.dcm": "charset",  # UTF-8
    "chrJapMulti.dcm": "charset",  # ISO 2022 escapes
    "chrH31.dcm": "charset",  # Korean, ISO 2022 code extensions
    "chrRuss.dcm": "charset",  # Cyrillic
    "varied_latin1.dcm": "made",
    "varied_jis.dcm": "made",
    "varied_implicit.dcm": "made",
    "varied_bigendian.dcm": "made",
}


def varied_instance(path: Path, *, charset: str, transfer_syntax: str) -> Path:
    """A CT instance with one of nearly everything DICOM JSON has to express, fixed UIDs and values."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.12.1"
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.12.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.12.3"
    jis = "ISO 2022" in charset
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう" if jis else "Müller^Jörg"
    ds.PatientID = "PID 12  "
    ds.PatientBirthDate = ""
    ds.StudyDate = "20240506"
    ds.StudyTime = "101500.25"
    ds.StudyDescription = "山田 検査" if jis else "Thorax spécial"
    ds.ReferringPhysicianName = "Smith^Jo\\Doe^A"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesNumber = "  7"
    ds.InstanceNumber = "+3"
    ds.ImagePositionPatient = ["-125.5", "1e3", ".5"]
    ds.PixelSpacing = ["0.48828125", "0.48828125"]
    ds.SliceThickness = ""
    ds.WindowCenter = ["40", "400"]
    ds.add_new(0x00181030, "LO", ["A", "", "B "])
    ds.add_new(0x00204000, "LT", "line one\r\nline two\\with a backslash  ")
    ds.add_new(0x00209165, "AT", [0x00100010, 0x00200013])
    ds.add_new(0x00189313, "FD", [1.5, 2.25, -3.0])
    ds.add_new(0x00109431, "FL", 0.1)
    ds.add_new(0x00280106, "US", 3)
    ds.add_new(0x00281101, "US", [4096, 0, 12])
    ds.add_new(0x0008041B, "OB", b"\x01\x02" * 350)  # inline binary
    ds.add_new(0x0008041C, "OB", b"\x01\x02" * 400)  # over 768 bytes: BulkDataURI
    ds.add_new(0x00281201, "OW", b"\x03\x04" * 1000)  # over 1024 bytes: left out, placeholder
    ds.add_new(0x00100218, "UT", "long text " * 7000)  # over 64 KiB: placeholder whatever its VR
    ds.add_new(0x00080201, "SH", "+0100")
    ds.add_new(0x00081010, "SH", "")
    ds.add_new(0x00400275, "SQ", Sequence([Dataset(), Dataset()]))
    item = ds[0x00400275].value[0]
    item.ScheduledProcedureStepID = "SPS1"
    item.PatientName = "Doe^John"
    item.add_new(0x0008041B, "OB", b"\x00" * 900)
    ds.add_new(0x00082112, "SQ", Sequence([]))
    block = ds.private_block(0x0009, "PORTAL TEST", create=True)
    block.add_new(0x10, "LO", "private value")
    block.add_new(0x11, "DS", "2.5")
    block.add_new(0x12, "UN", b"\x01\x02\x03\x04")
    block.add_new(0x13, "SL", [-1, 7])
    ds.Rows = 2
    ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00\x01" * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path


def golden_path(name: str, tmp_path: Path) -> Path:
    kind = GOLDEN_FILES[name]
    if kind == "sample":
        return sample_path(name)
    if kind == "charset":
        return Path(get_charset_files(name)[0])
    variants = {
        "varied_latin1.dcm": ("ISO_IR 100", ExplicitVRLittleEndian),
        "varied_jis.dcm": ("\\ISO 2022 IR 87", ExplicitVRLittleEndian),
        "varied_implicit.dcm": ("ISO_IR 100", ImplicitVRLittleEndian),
        "varied_bigendian.dcm": ("ISO_IR 100", ExplicitVRBigEndian),
    }
    charset, syntax = variants[name]
    return varied_instance(tmp_path / name, charset=charset, transfer_syntax=syntax)


def as_golden(parsed: ParsedInstance) -> str:
    """The parse result as the text kept in golden/: index fields, then the header as stored (key order kept)."""
    fields: dict[str, Any] = {}
    for key, value in parsed.__dict__.items():
        if key != "metadata":
            fields[key] = value.isoformat() if isinstance(value, (date, time)) else value
    return json.dumps({"fields": fields, "metadata": parsed.metadata}, indent=1, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("name", sorted(GOLDEN_FILES))
def test_header_and_fields_match_the_golden_output(name, tmp_path):
    parsed = parse_instance(golden_path(name, tmp_path))

    assert as_golden(parsed) == (GOLDEN / f"{name}.json").read_text(encoding="utf-8")


def test_golden_files_cover_what_dicom_json_has_to_express(tmp_path):
    """A guard on the golden set itself: each F.2 case the converter handles appears in it."""
    parsed = parse_instance(golden_path("varied_jis.dcm", tmp_path))
    header = parsed.metadata

    assert header["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert header["00080090"]["Value"] == [{"Alphabetic": "Smith^Jo"}, {"Alphabetic": "Doe^A"}]
    assert header["00200013"] == {"vr": "IS", "Value": [3]}
    assert header["00200032"] == {"vr": "DS", "Value": [-125.5, 1000.0, 0.5]}
    assert header["00180050"] == {"vr": "DS"}  # empty value: no "Value"
    assert header["00209165"] == {"vr": "AT", "Value": ["00100010", "00200013"]}
    assert header["00181030"] == {"vr": "LO", "Value": ["A", "", "B"]}
    assert header["0008041B"]["InlineBinary"]
    assert header["0008041C"] == {"vr": "OB", "BulkDataURI": "0008041C"}
    assert header["00281201"] == {"vr": "OW", "BulkDataURI": "00281201"}
    assert header["00100218"] == {"vr": "UT", "BulkDataURI": "00100218"}
    assert header["00082112"] == {"vr": "SQ", "Value": []}
    nested = header["00400275"]["Value"][0]
    assert nested["0008041B"] == {"vr": "OB", "BulkDataURI": "0008041B"}
    assert header["00091012"]["vr"] == "UN"
    assert header["00091013"] == {"vr": "SL", "Value": [-1, 7]}
    assert header["7FE00010"] == {"vr": "OW", "BulkDataURI": "7FE00010"}


# --- the property: the header means what the file says -------------------------------------------------


def corpus() -> list[Path]:
    files = [p for p in sorted(EDGE_DIR.rglob("*")) if p.is_file() and p.suffix not in {".json", ".txt", ".md"}]
    files += [Path(p) for p in get_charset_files("*.dcm")]
    return files


def same_value(from_json: Any, from_file: Any) -> bool:
    if isinstance(from_file, Sequence):
        return len(from_json) == len(from_file)  # items are compared element by element by the caller
    if isinstance(from_file, (list, tuple, MultiValue)):
        return len(from_json) == len(from_file) and all(map(same_value, from_json, from_file))
    if isinstance(from_file, float) and math.isnan(from_file):
        return isinstance(from_json, float) and math.isnan(from_json)
    if isinstance(from_file, bytes):
        return from_json == from_file
    return str(from_json).rstrip("=") == str(from_file).rstrip("=") if from_file != from_json else True


def compare(header: dict[str, Any], json_ds: Dataset, file_ds: Dataset, where: str) -> list[str]:
    problems = []
    for key, element in header.items():
        tag = int(key, 16)
        if tag >> 16 == 0x0002 or "BulkDataURI" in element:
            continue
        if tag not in file_ds:
            problems.append(f"{where}{key} is not in the file")
            continue
        ours, theirs = json_ds[tag], file_ds[tag]
        if theirs.VR == "SQ":
            for number, (our_item, their_item) in enumerate(zip(ours.value, theirs.value, strict=True)):
                problems += compare(element["Value"][number], our_item, their_item, f"{where}{key}[{number}].")
            continue
        if ours.is_empty != theirs.is_empty or not same_value(ours.value, theirs.value):
            problems.append(f"{where}{key}: {ours.value!r} from JSON, {theirs.value!r} in the file")
    return problems


def test_every_readable_file_s_header_reads_back_as_the_file_s_values():
    checked = 0
    failures: dict[str, list[str]] = {}
    for path in corpus():
        try:
            parsed = parse_instance(path)
        except InvalidDicom:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            file_ds = dcmread(path, stop_before_pixels=True, force=True)
            json_ds = Dataset.from_json(parsed.metadata, bulk_data_uri_handler=lambda *_: None)
        problems = compare(parsed.metadata, json_ds, file_ds, "")
        if problems:
            failures[str(path.relative_to(EDGE_DIR) if path.is_relative_to(EDGE_DIR) else path.name)] = problems
        checked += 1

    assert checked > 400  # the corpus is there: pydicom's samples, charset files and the fuzz corpus
    assert failures == {}


def test_every_readable_file_s_index_fields_are_what_pydicom_reads(monkeypatch):
    """The index fields read from the header's plain JSON (``_PlainFirst``) equal pydicom's own reading."""
    from studies import dicom

    from_json = {}
    for path in corpus():
        try:
            from_json[path] = parse_instance(path)
        except InvalidDicom:
            continue
    monkeypatch.setattr(dicom, "_PlainFirst", lambda ds, plain: ds)

    differing = []
    for path, parsed in from_json.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            through_pydicom = parse_instance(path)
        if {**parsed.__dict__, "metadata": None} != {**through_pydicom.__dict__, "metadata": None}:
            differing.append(path.name)

    assert len(from_json) > 400
    assert differing == []

"""parse_instance on real files: pydicom's samples, generated instances, and the hostile edge corpus."""

from __future__ import annotations

import io
import time
import warnings
from datetime import date
from datetime import time as dtime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite

from studies.dicom import ParsedInstance, is_valid_uid, parse_instance
from studies.errors import DicomDirectory, InvalidDicom, NotDicom
from tests.dicom_files import EDGE_DIR, ct_dataset, sample_path, write_ct


@pytest.mark.parametrize(
    ("name", "transfer_syntax"),
    [
        ("CT_small.dcm", "1.2.840.10008.1.2.1"),
        ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),
        ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),
        ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
        ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80"),
        ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),
        ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),
    ],
)
def test_sample_files_of_several_transfer_syntaxes_are_accepted(name, transfer_syntax):
    parsed = parse_instance(sample_path(name))

    assert parsed.transfer_syntax_uid == transfer_syntax
    assert is_valid_uid(parsed.sop_instance_uid)
    assert is_valid_uid(parsed.study_instance_uid)


def test_multiframe_sample_reports_its_frames():
    parsed = parse_instance(sample_path("SC_rgb_rle_2frame.dcm"))

    assert parsed.number_of_frames == 2
    assert (parsed.rows, parsed.columns) == (100, 100)


def test_header_values_are_read_into_plain_fields(tmp_path):
    path = write_ct(tmp_path / "ct.dcm", patient_id="PID-7", patient_name="Doe^Jane", rows=8, columns=4)

    parsed = parse_instance(path)

    assert isinstance(parsed, ParsedInstance)
    assert parsed.patient_id == "PID-7"
    assert parsed.patient_name == "Doe^Jane"
    assert parsed.patient_birth_date == date(1970, 1, 1)
    assert parsed.study_date == date(2024, 5, 6)
    assert parsed.study_time == dtime(10, 15)
    assert parsed.modality == "CT"
    assert (parsed.rows, parsed.columns, parsed.number_of_frames) == (8, 4, 1)


def test_metadata_is_dicom_json_with_pixel_data_left_out(tmp_path):
    path = write_ct(tmp_path / "ct.dcm", rows=64, columns=64)

    metadata = parse_instance(path).metadata

    assert metadata["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Test^Patient"}]}
    assert metadata["00280010"] == {"vr": "US", "Value": [64]}
    assert metadata["7FE00010"]["BulkDataURI"] == "7FE00010"
    assert "InlineBinary" not in metadata["7FE00010"]
    assert metadata["00020010"]["Value"] == ["1.2.840.10008.1.2.1"]


def test_file_without_preamble_but_with_meta_is_accepted(tmp_path):
    source = write_ct(tmp_path / "ct.dcm")
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(source.read_bytes()[128:].replace(b"DICM", b"", 1))

    parsed = parse_instance(bare)

    assert parsed.sop_instance_uid == dcmread(source).SOPInstanceUID


def test_dataset_without_any_file_meta_is_accepted(tmp_path):
    ds = ct_dataset()
    del ds.file_meta
    path = tmp_path / "raw.dcm"
    dcmwrite(path, ds, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"

    parsed = parse_instance(path)

    assert parsed.transfer_syntax_uid == "1.2.840.10008.1.2"
    assert parsed.sop_instance_uid == ds.SOPInstanceUID


def test_file_object_without_a_path_is_accepted():
    buffer = io.BytesIO(sample_path("CT_small.dcm").read_bytes())

    parsed = parse_instance(buffer)

    assert parsed.modality == "CT"


@pytest.mark.parametrize("cut", [200, 1000, -10])
def test_truncated_file_is_rejected(tmp_path, cut):
    data = write_ct(tmp_path / "ct.dcm", rows=32, columns=32).read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[:cut])

    with pytest.raises(InvalidDicom, match="truncated"):
        parse_instance(truncated)


def test_pixel_data_shorter_than_the_image_size_is_rejected(tmp_path):
    ds = ct_dataset(rows=32, columns=32)
    ds.Rows = 64
    path = tmp_path / "short.dcm"
    ds.save_as(path, enforce_file_format=True)

    with pytest.raises(InvalidDicom, match="pixel data is shorter"):
        parse_instance(path)


@pytest.mark.parametrize("uid", ["1.2.03.4", "1.2.3.", "abc", "1." + "2" * 70, "1.2.3.4x"])
def test_invalid_study_uid_is_rejected(tmp_path, uid):
    ds = ct_dataset()
    ds.StudyInstanceUID = uid
    path = tmp_path / "bad-uid.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)

    with pytest.raises(InvalidDicom, match="Study Instance UID"):
        parse_instance(path)


def test_missing_sop_instance_uid_is_rejected(tmp_path):
    ds = ct_dataset()
    del ds.SOPInstanceUID
    path = tmp_path / "no-uid.dcm"
    ds.save_as(path, enforce_file_format=False)

    with pytest.raises(InvalidDicom, match="SOP Instance UID"):
        parse_instance(path)


@pytest.mark.parametrize("content", [b"", b"hello, this is a readme\n" * 20, b"\x89PNG\r\n\x1a\n" + b"\x00" * 300])
def test_non_dicom_file_is_rejected_as_not_dicom(tmp_path, content):
    path = tmp_path / "file.bin"
    path.write_bytes(content)

    with pytest.raises(NotDicom):
        parse_instance(path)


def test_dicomdir_is_recognised():
    with pytest.raises(DicomDirectory):
        parse_instance(sample_path("dicomdirtests/DICOMDIR"))


def _edge_files() -> list[Path]:
    return sorted(p for p in EDGE_DIR.rglob("*") if p.is_file())


@pytest.mark.skipif(not EDGE_DIR.exists(), reason="the shared edge-case corpus is not present")
def test_every_edge_corpus_file_is_accepted_or_rejected_cleanly():
    files = _edge_files()
    assert len(files) > 700
    accepted = rejected = 0
    slowest = 0.0

    for path in files:
        started = time.monotonic()
        try:
            parsed = parse_instance(path)
        except InvalidDicom as exc:
            assert exc.message
            rejected += 1
        else:
            assert is_valid_uid(parsed.sop_instance_uid)
            accepted += 1
        slowest = max(slowest, time.monotonic() - started)

    assert accepted and rejected
    assert slowest < 5


@pytest.mark.parametrize(
    "name",
    [
        "pydicom-test-files/MR_truncated.dcm",
        "pydicom-test-files/rtplan_truncated.dcm",
        "pydicom-test-files/zipMR.gz",
        "pydicom-test-files/README.txt",
    ],
)
def test_known_bad_edge_files_are_rejected(name):
    with pytest.raises(InvalidDicom):
        parse_instance(EDGE_DIR / name)


def test_unknown_photometric_interpretation_is_rejected(tmp_path):
    ds = ct_dataset()
    ds.PhotometricInterpretation = "FUZZ"
    path = tmp_path / "fuzz.dcm"
    ds.save_as(path, enforce_file_format=True)

    with pytest.raises(InvalidDicom, match="Photometric"):
        parse_instance(path)


def test_sequences_nested_too_deeply_are_rejected(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = ct_dataset()
    inner = Dataset()
    for _ in range(80):
        outer = Dataset()
        outer.ReferencedImageSequence = Sequence([inner])
        inner = outer
    ds.ReferencedImageSequence = inner.ReferencedImageSequence
    path = tmp_path / "deep.dcm"
    ds.save_as(path, enforce_file_format=True)

    with pytest.raises(InvalidDicom, match="nested too deeply"):
        parse_instance(_undefined_length_copy(path, tmp_path))


def _undefined_length_copy(path: Path, tmp_path: Path) -> Path:
    """Rewrite every sequence and item with undefined length, as many modalities write them."""
    ds = dcmread(path)

    def mark(dataset) -> None:
        for element in dataset:
            if element.VR == "SQ":
                element.is_undefined_length = True
                for item in element.value:
                    item.is_undefined_length_sequence_item = True
                    mark(item)

    mark(ds)
    target = tmp_path / "undefined.dcm"
    dcmwrite(target, ds, enforce_file_format=True)
    return target


def test_deflate_bomb_is_rejected_without_inflating_it(tmp_path):
    import zlib

    source = sample_path("image_dfl.dcm").read_bytes()
    ds = dcmread(sample_path("image_dfl.dcm"), stop_before_pixels=True)
    # Keep preamble and file meta (group length element + the group), put a deflated bomb in the dataset's place.
    meta_end = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = compressor.compress(b"\x00" * (200 * 1024 * 1024)) + compressor.flush()
    path = tmp_path / "bomb.dcm"
    path.write_bytes(source[:meta_end] + bomb)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"

    with pytest.raises(InvalidDicom, match="too large"):
        parse_instance(path)


def test_header_with_too_many_elements_is_refused_before_pydicom_reads_it(tmp_path, monkeypatch):
    from studies import dicom

    monkeypatch.setattr(dicom, "MAX_ELEMENTS", 20)
    path = write_ct(tmp_path / "ct.dcm")

    with pytest.raises(InvalidDicom, match="more than 20 elements"):
        parse_instance(path)


def test_sequence_item_overrunning_its_length_is_rejected(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = ct_dataset()
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds.ReferencedImageSequence = Sequence([item])
    path = tmp_path / "seq.dcm"
    ds.save_as(path, enforce_file_format=True)
    data = bytearray(path.read_bytes())
    # The item header (FFFE,E000) and its 4-byte length: claim one byte more than the item holds.
    at = data.index(b"\xfe\xff\x00\xe0") + 4
    data[at : at + 4] = (int.from_bytes(data[at : at + 4], "little") + 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))

    with pytest.raises(InvalidDicom, match="malformed"):
        parse_instance(path)


def test_parsing_in_many_threads_leaves_pydicom_validation_mode_alone():
    # Regression: pydicom's to_json_dict(suppress_invalid_tags=True) flips a process-wide setting to
    # "raise" and back without a lock; parallel ingests (threads of the web server or of DIMSE
    # associations) could leave it on "raise", after which slightly invalid files were refused.
    from concurrent.futures import ThreadPoolExecutor

    import pydicom.config

    from studies import dicom
    from tests.dicom_files import sample_path

    before = pydicom.config.settings.reading_validation_mode
    paths = [str(sample_path(name)) for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")] * 40

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(dicom.parse_instance, paths))

    assert pydicom.config.settings.reading_validation_mode == before == pydicom.config.IGNORE

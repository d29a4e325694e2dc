"""The PS3.15 Annex E engine on real files: nothing the profile removes or replaces survives anywhere."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta
from functools import cache
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from studies.anonymize.deidentify import (
    BYTES_VRS,
    DeidentifyContext,
    PixelRectangle,
    deidentify,
    uid_derive,
)
from studies.anonymize.profile import Option, load_profile, load_safe_private
from tests.dicom_files import EDGE_DIR  # noqa: E402
from tests.dicom_files import PYDICOM_SAMPLES as PYDICOM_FILES  # noqa: E402

SECRET = b"project-secret-for-tests"
ALL_OPTIONS = frozenset(Option)


def storable(path: Path) -> bool:
    """Whether ingest would store the file: only those can ever be anonymized."""
    from studies import dicom

    try:
        dicom.parse_instance(str(path))
    except Exception:  # noqa: BLE001 - refused by ingest, with a reason; not ours to anonymize
        return False
    return True


def corpus_paths() -> list[Path]:
    """pydicom's test files (the shared copy and the installed ones) and the edge cases, found by name only.

    Reading them is left to the tests (``corpus_sample``), so collecting this module, or deselecting its
    tests, costs no parsing.
    """
    files = sorted(PYDICOM_FILES.glob("*.dcm")) + sorted(PYDICOM_FILES.glob("dicomdirtests/**/*"))
    local = Path(pydicom.__file__).parent / "data" / "test_files"
    files += sorted(p for p in local.glob("*.dcm") if not (PYDICOM_FILES / p.name).exists())
    files += sorted((EDGE_DIR / "pwnlab-fuzz-corpus-v3").rglob("*.dcm"))
    return [p for p in files if p.is_file() and p.name != "DICOMDIR"]


def load(path: Path) -> Dataset:
    ds = pydicom.dcmread(path, force=True)
    list(ds.iterall())
    return ds


def readable(path: Path) -> Dataset | None:
    """The sample, if pydicom reads it as a dataset worth anonymizing (unreadable ones are ingest's concern)."""
    try:
        ds = load(path)
    except (InvalidDicomError, Exception):  # noqa: BLE001 - pydicom raises many types for broken files
        return None
    return ds if "SOPInstanceUID" in ds or "PatientName" in ds else None


@cache
def anonymizable(path: Path) -> bool:
    """Whether the file is one ingest stores and pydicom reads as a dataset worth anonymizing."""
    if path.is_relative_to(EDGE_DIR) and not storable(path):
        return False
    return readable(path) is not None


def corpus_sample(path: Path) -> Dataset:
    """A fresh copy of one corpus file; a file ingest refuses is never anonymized, so its case is skipped."""
    if not anonymizable(path):
        pytest.skip("ingest refuses this file (or it holds no dataset), so it is never anonymized")
    return load(path)


def context(options: frozenset[str] = frozenset(), **overrides) -> DeidentifyContext:
    return DeidentifyContext(
        options=options,
        uid_for=lambda uid: uid_derive(SECRET, uid),
        pseudonym="RESEARCH-0001",
        date_shift=overrides.pop("date_shift", timedelta(days=-137)),
        **overrides,
    )


def walk(ds: Dataset) -> Iterator[tuple[Dataset, pydicom.DataElement]]:
    for elem in ds:
        yield ds, elem
        if elem.VR == "SQ":
            for item in elem.value or ():
                yield from walk(item)


def text_values(elem: pydicom.DataElement) -> list[str]:
    if elem.VR in BYTES_VRS or elem.VR == "SQ" or elem.value in (None, "", b""):
        return []
    values = elem.value if elem.VM > 1 else [elem.value]
    return [str(v).strip() for v in values if str(v).strip()]


def removed_or_replaced_values(ds: Dataset, options: frozenset[str]) -> set[str]:
    """Values of every attribute the profile removes or replaces (K and C kept values aside)."""
    profile = load_profile()
    sensitive: set[str] = set()
    kept: set[str] = set()
    for _, elem in walk(ds):
        tag = int(elem.tag)
        if (tag >> 16) & 1:
            sensitive.update(text_values(elem)) if not (0x10 <= (tag & 0xFFFF) <= 0xFF) else None
            continue
        rule = profile.rule_for(tag)
        action = rule.action(options) if rule else "K"
        target = kept if action in {"K", "C"} else sensitive
        target.update(text_values(elem))
    # A value that a kept attribute also holds is legitimately in the output; short values are noise.
    candidates = {v for v in sensitive - kept if len(v) >= 6 and not v.replace(".", "").isdigit()}
    return {v for v in candidates if not any(v in k for k in kept)}


def private_left_unsafe(ds: Dataset, options: frozenset[str]) -> list[str]:
    """Private attributes still in ``ds`` that the options do not allow to keep (with their creators)."""
    safe = load_safe_private() if Option.RETAIN_SAFE_PRIVATE in options else frozenset()
    left = []
    for parent, elem in walk(ds):
        group, element = int(elem.tag) >> 16, int(elem.tag) & 0xFFFF
        if not group & 1:
            continue
        if 0x0010 <= element <= 0x00FF:
            # A private creator may stay only beside an attribute of its block that stayed.
            allowed = any(int(e.tag) >> 16 == group and (int(e.tag) & 0xFFFF) >> 8 == element for e in parent)
        else:
            creator = parent.get((group << 16) | (element >> 8))
            name = str(creator.value).strip().upper() if creator is not None else ""
            allowed = (name, group, element & 0xFF) in safe
        if not allowed:
            left.append(str(elem.tag))
    return left


def output_bytes_without_pixels(ds: Dataset) -> bytes:
    clone = pydicom.dcmread(io.BytesIO(saved(ds)), force=True)
    for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if tag in clone:
            del clone[tag]
    return saved(clone)


def saved(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


SAMPLES = corpus_paths()


def test_the_table_covers_every_row_of_annex_e():
    profile = load_profile()

    # The shipped Table E.1-1 has 647 rows: 643 single tags, 3 masks (50xx,xxxx 60xx,3000 60xx,4000) and one for private
    # attributes; the 2026d additions bring 10 single tags more.
    assert (len(profile.exact), len(profile.masks)) == (643 + 10, 3)
    assert profile.rule_for(0x00100010).basic == "Z"  # PatientName
    assert profile.rule_for(0x0020000D).basic == "U"  # StudyInstanceUID
    assert profile.rule_for(0x60103000).basic == "X"  # Overlay Data, a 60xx mask
    assert profile.rule_for(0x00091001).basic == "X"  # any private attribute


@pytest.mark.parametrize(
    "options", [frozenset(), ALL_OPTIONS - {Option.RETAIN_LONG_FULL_DATES}], ids=["basic", "options"]
)
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_nothing_the_profile_removes_survives_and_the_file_stays_valid(path, options):
    original = corpus_sample(path)
    sensitive = removed_or_replaced_values(original, options)
    pixels_before = original.get("PixelData")
    ds = load(path)

    report = deidentify(ds, context(options))

    raw = output_bytes_without_pixels(ds)
    survivors = {value for value in sensitive if value.encode(errors="ignore") in raw}
    assert not survivors
    reread = pydicom.dcmread(io.BytesIO(saved(ds)), force=True)
    assert reread.PatientIdentityRemoved == "YES"
    assert reread.PatientName == "RESEARCH-0001"
    assert reread.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert reread.get("PixelData") == pixels_before
    assert not private_left_unsafe(reread, options)
    assert report.actions


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_uids_are_replaced_consistently(path):
    original = corpus_sample(path)
    if "SOPInstanceUID" not in original:
        pytest.skip("the file has no SOP Instance UID to replace")
    ds = load(path)

    deidentify(ds, context())

    uids = [keyword for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if keyword in original]
    assert [ds[keyword].value for keyword in uids] == [uid_derive(SECRET, original[keyword].value) for keyword in uids]
    assert ds.get("SOPClassUID") == original.get("SOPClassUID")
    assert getattr(ds, "file_meta", {}).get("MediaStorageSOPInstanceUID", ds.SOPInstanceUID) == ds.SOPInstanceUID


def _elements(ds: Dataset) -> list[tuple[str, str, str]]:
    return [(str(elem.tag), elem.VR, repr(elem.value)) for elem in ds.iterall()]


@pytest.mark.parametrize(
    "options", [frozenset(), ALL_OPTIONS - {Option.RETAIN_LONG_FULL_DATES}], ids=["basic", "options"]
)
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_a_file_read_lazily_comes_out_as_the_same_file_decoded_whole(path, options):
    """A job de-identifies a file as pydicom reads it, lazily: what the profile keeps as it is stays undecoded
    and is written back byte for byte. Its output must hold exactly what de-identifying it decoded holds."""
    corpus_sample(path)  # skips what ingest never stores
    whole = load(path)
    lazy = pydicom.dcmread(path, force=True)

    report_whole = deidentify(whole, context(options))
    report_lazy = deidentify(lazy, context(options))

    assert report_lazy == report_whole
    reread_whole = pydicom.dcmread(io.BytesIO(saved(whole)), force=True)
    reread_lazy = pydicom.dcmread(io.BytesIO(saved(lazy)), force=True)
    assert _elements(reread_lazy) == _elements(reread_whole)


def test_a_study_in_several_files_stays_internally_consistent():
    files = [p for p in sorted((PYDICOM_FILES / "dicomdirtests").rglob("*")) if p.is_file() and p.name != "DICOMDIR"]
    studies_before: dict[str, set[str]] = {}
    studies_after: dict[str, set[str]] = {}

    for path in files:
        ds = readable(path)
        if ds is None or "StudyInstanceUID" not in ds:
            continue
        before = (ds.StudyInstanceUID, ds.SeriesInstanceUID)
        deidentify(ds, context())
        studies_before.setdefault(before[0], set()).add(before[1])
        studies_after.setdefault(ds.StudyInstanceUID, set()).add(ds.SeriesInstanceUID)

    assert len(studies_before) == len(studies_after) > 1
    assert sorted(len(s) for s in studies_before.values()) == sorted(len(s) for s in studies_after.values())


def test_modified_dates_shift_consistently_and_full_dates_are_kept():
    path = PYDICOM_FILES / "CT_small.dcm"
    shifted = readable(path)
    kept = readable(path)
    removed = readable(path)

    deidentify(shifted, context(frozenset({Option.RETAIN_LONG_MODIFIED_DATES}), date_shift=timedelta(days=-10)))
    deidentify(kept, context(frozenset({Option.RETAIN_LONG_FULL_DATES})))
    deidentify(removed, context())

    original = readable(path)
    assert kept.StudyDate == original.StudyDate
    assert shifted.StudyDate != original.StudyDate and len(shifted.StudyDate) == 8
    assert shifted.LongitudinalTemporalInformationModified == "MODIFIED"
    assert removed.StudyDate in ("", "19000101")
    assert removed.LongitudinalTemporalInformationModified == "REMOVED"


def test_clean_descriptors_keeps_the_text_but_scrubs_the_patient_name():
    ds = readable(PYDICOM_FILES / "CT_small.dcm")
    family_name = str(ds.PatientName).split("^")[0]
    ds.StudyDescription = f"Follow-up for {family_name} chest"

    deidentify(ds, context(frozenset({Option.CLEAN_DESCRIPTORS})))

    assert ds.StudyDescription == "Follow-up for *** chest"


def test_patient_characteristics_are_kept_only_with_their_option():
    plain = readable(PYDICOM_FILES / "CT_small.dcm")
    retained = readable(PYDICOM_FILES / "CT_small.dcm")
    plain.PatientSex = retained.PatientSex = "F"

    deidentify(plain, context())
    deidentify(retained, context(frozenset({Option.RETAIN_PATIENT_CHARACTERISTICS})))

    assert retained.PatientSex == "F"
    assert plain.get("PatientSex", "") in ("", None)


def test_safe_private_attributes_survive_only_under_their_option():
    ds = readable(PYDICOM_FILES / "CT_small.dcm")
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")
    block.add_new(0x10, "LO", "Patient John Smith")
    kept = readable(PYDICOM_FILES / "CT_small.dcm")
    kept_block = kept.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    kept_block.add_new(0x0C, "IS", "1000")
    kept_block.add_new(0x10, "LO", "Patient John Smith")

    deidentify(ds, context())
    deidentify(kept, context(frozenset({Option.RETAIN_SAFE_PRIVATE})))

    assert not any((int(e.tag) >> 16) & 1 for e in ds)
    assert kept.private_block(0x0019, "SIEMENS MR HEADER")[0x0C].value == "1000"
    assert b"John Smith" not in saved(kept)


def test_burned_in_images_are_flagged_and_blanked_rectangles_clean_them():
    ds = readable(PYDICOM_FILES / "CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    flagged = readable(PYDICOM_FILES / "CT_small.dcm")
    flagged.BurnedInAnnotation = "YES"

    cleaned_report = deidentify(ds, context(pixel_rectangles=(PixelRectangle(0, 0, 20, 10),)))
    flagged_report = deidentify(flagged, context())

    assert flagged_report.needs_review
    assert not cleaned_report.needs_review
    assert ds.BurnedInAnnotation == "NO"
    assert (ds.pixel_array[0:10, 0:20] == ds.pixel_array.min()).all()
    assert "113101" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]

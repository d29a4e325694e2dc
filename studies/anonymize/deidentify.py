"""Apply the PS3.15 Annex E profile to a pydicom dataset.

One function, ``deidentify``, walks every element (sequences and private blocks included) and applies
the action the profile gives it under the chosen options:

- D: replace with a dummy value of the same VR (UIDs: a replacement UID)
- Z: empty value (zero length), sequences emptied
- X: remove
- K: keep (sequences are still walked, so that what they contain is de-identified too)
- C: clean: dates shifted by the patient's offset (Modified Dates), free text scrubbed of the patient's
  identifying strings (Clean Descriptors), AE titles and device text replaced by stable dummies
- U: replace UIDs through the project's mapping (the same original always gives the same new UID)

Combined codes are resolved to the choice that keeps the object valid without keeping information:
Z/D, X/D and X/Z/D to D; X/Z to Z; X/Z/U* to U (walk the sequence, replacing its UIDs).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from studies.anonymize.profile import OPTION_CODES, Option, Profile, Rule, load_profile, load_safe_private

STRING_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
BYTES_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
NUMBER_VRS = {"FL", "FD", "SL", "SS", "SV", "UL", "US", "UV", "AT"}
MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "AS": 4}
DUMMY = {
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
}
DUMMY_TEXT = "ANONYMIZED"
SCRUBBED = "***"

# Modalities and SOP classes that commonly carry text burned into the pixels (PS3.15 E.1.1 note).
BURNED_IN_MODALITIES = {"US", "SC", "OT", "XC", "ES", "DOC"}
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"

PATIENT_IDENTITY_KEYWORDS = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames",
                             "PatientBirthName", "PatientMotherBirthName", "AccessionNumber", "PatientAddress",
                             "PatientTelephoneNumbers", "MedicalRecordLocator", "IssuerOfPatientID")


@dataclass(frozen=True)
class PixelRectangle:
    """A region of every frame to blank, in pixels from the top-left corner."""

    x: int
    y: int
    width: int
    height: int


@dataclass
class DeidentifyContext:
    """Everything ``deidentify`` needs besides the dataset: options, UID mapping, pseudonym, date shift."""

    options: frozenset[str]
    uid_for: Callable[[str], str]
    pseudonym: str
    date_shift: timedelta = timedelta(0)
    pixel_rectangles: tuple[PixelRectangle, ...] = ()


@dataclass
class DeidentifyReport:
    actions: Counter[str] = field(default_factory=Counter)
    private_removed: int = 0
    private_kept: int = 0
    burned_in_suspected: bool = False
    pixels_cleaned: bool = False
    pixel_clean_error: str = ""

    @property
    def needs_review(self) -> bool:
        """True when the pixels may still show identifying text that nobody checked or blanked."""
        return self.burned_in_suspected and not self.pixels_cleaned


def _resolve(action: str) -> str:
    if action in {"Z/D", "X/D", "X/Z/D"}:
        return "D"
    if action == "X/Z":
        return "Z"
    if action.startswith("X/Z/U"):
        return "U"
    return action


def _dictionary_vr(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


# VRs whose raw bytes never hold a sequence's items: an element of such a VR that the profile keeps needs
# no decoding. Without a VR (implicit VR files), or as UN, it might be a sequence, so it is decoded.
_LEAF_VRS = (STRING_VRS | BYTES_VRS | NUMBER_VRS) - {"UN"}


def _plain_raw(elem: DataElement | RawDataElement) -> bool:
    """Whether ``elem`` is still undecoded, surely not a sequence, and of a length pydicom writes as it is."""
    return (
        isinstance(elem, RawDataElement)
        and elem.VR in _LEAF_VRS
        and elem.length != 0xFFFFFFFF
        and elem.length % 2 == 0
    )


def _fit(vr: str, text: str) -> str:
    limit = MAX_LENGTH.get(vr)
    return text[:limit] if limit else text


def _empty(elem: DataElement) -> None:
    if elem.VR == "SQ":
        elem.value = Sequence()
    elif elem.VR in BYTES_VRS:
        elem.value = b""
    elif elem.VR in STRING_VRS:
        elem.value = ""
    else:
        elem.value = None


def _stable_dummy(vr: str, original: str) -> str:
    digest = hashlib.sha256(original.encode()).hexdigest()[:8].upper()
    return _fit(vr, f"ANON{digest}")


class _Walker:
    def __init__(self, ctx: DeidentifyContext, profile: Profile, identifying: list[str]) -> None:
        self.ctx = ctx
        self.profile = profile
        self.safe_private = load_safe_private() if Option.RETAIN_SAFE_PRIVATE in ctx.options else frozenset()
        self.report = DeidentifyReport()
        self.actions: dict[int, str] = {}  # each tag's action under the options, resolved once per dataset
        pattern = "|".join(re.escape(token) for token in sorted(identifying, key=len, reverse=True))
        self.scrub_pattern = re.compile(pattern, re.IGNORECASE) if pattern else None

    # -- values -------------------------------------------------------------------------------------
    def _map_uids(self, elem: DataElement) -> None:
        # The standard's VR counts, not the file's: a UID written as LO (or UN) is still a UID.
        if (elem.VR != "UI" and _dictionary_vr(elem.tag) != "UI") or elem.value in (None, "", b""):
            return
        if isinstance(elem.value, bytes):
            elem.value = elem.value.decode("ascii", "replace").strip("\x00 ")
        if elem.VM > 1:
            elem.value = [self.ctx.uid_for(str(uid)) for uid in elem.value]
        else:
            elem.value = self.ctx.uid_for(str(elem.value))

    def _dummy(self, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "UI" or _dictionary_vr(elem.tag) == "UI":
            self._map_uids(elem)
        elif vr in DUMMY:
            elem.value = DUMMY[vr]
        elif vr in {"PN", "LO", "SH", "LT", "ST", "UT", "UC"}:
            elem.value = _fit(vr, DUMMY_TEXT)
        elif vr == "UR":
            elem.value = ""
        elif vr in BYTES_VRS:
            elem.value = b"\x00\x00" if vr != "UN" else b""
        elif vr in NUMBER_VRS:
            elem.value = 0
        else:
            _empty(elem)

    def _shift_date(self, value: str, vr: str) -> str:
        text = value.strip()
        try:
            original = date(int(text[0:4]), int(text[4:6]), int(text[6:8]))
        except (ValueError, IndexError):
            return DUMMY.get(vr, "")
        shifted = (original + self.ctx.date_shift).strftime("%Y%m%d")
        return shifted + text[8:] if vr == "DT" else shifted

    def _clean(self, elem: DataElement) -> None:
        vr = elem.VR
        if vr in {"DA", "DT"} and Option.RETAIN_LONG_MODIFIED_DATES in self.ctx.options:
            values = elem.value if elem.VM > 1 else [elem.value]
            shifted = [self._shift_date(str(v), vr) for v in values if v not in (None, "")]
            elem.value = shifted if len(shifted) > 1 else (shifted[0] if shifted else "")
        elif vr == "TM":
            # Shifting by whole days keeps the time of day.
            return
        elif vr in {"AE", "CS"}:
            elem.value = _stable_dummy(vr, str(elem.value))
        elif vr in {"LO", "SH", "LT", "ST", "UT", "UC", "PN"}:
            if elem.value in (None, ""):
                return
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            cleaned = [self._scrub(str(v)) for v in values]
            elem.value = cleaned if len(cleaned) > 1 else cleaned[0]
        elif vr == "UI":
            self._map_uids(elem)
        elif vr != "SQ":
            self._dummy(elem)

    def _scrub(self, text: str) -> str:
        return self.scrub_pattern.sub(SCRUBBED, text) if self.scrub_pattern else text

    # -- structure ----------------------------------------------------------------------------------
    def walk(self, ds: Dataset) -> None:
        private_creators_used: set[int] = set()
        for tag in sorted(ds.keys()):
            group, element = tag >> 16, tag & 0xFFFF
            if element == 0 and group != 0x0002:
                # Group lengths would be wrong after the changes below.
                del ds[tag]
                continue
            if group & 1:
                self._private(ds, ds[tag], private_creators_used)
                continue
            rule = self.profile.rule_for(tag)
            if rule is None:
                # Kept: left as read (written back byte for byte) unless it may hold items to walk.
                if not _plain_raw(ds.get_item(tag)):
                    elem = ds[tag]
                    if elem.VR == "SQ":
                        self._walk_items(elem.value)
                continue
            action = self._action(tag, rule)
            self.report.actions[action] += 1
            if action == "X":
                del ds[tag]
            elif not (action == "K" and _plain_raw(ds.get_item(tag))):
                self._apply(ds, ds[tag], action)
        self._drop_unused_creators(ds, private_creators_used)

    def _apply(self, ds: Dataset, elem: DataElement, action: str) -> None:
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            _empty(elem)
        elif elem.VR == "SQ":
            # D, C, U and K on a sequence keep it and de-identify what it holds.
            self._walk_items(elem.value)
        elif action == "D":
            self._dummy(elem)
        elif action == "C":
            self._clean(elem)
        elif action == "U":
            self._map_uids(elem)
            if _dictionary_vr(elem.tag) != "UI" and elem.VR != "UI":
                # U on something that is not a UID at all (a damaged file): keep nothing of it.
                _empty(elem)

    def _walk_items(self, items: Iterable[Dataset]) -> None:
        for item in items or ():
            self.walk(item)

    def _private(self, ds: Dataset, elem: DataElement, creators_used: set[int]) -> None:
        tag = int(elem.tag)
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            return  # a private creator: kept only if something of its block is kept (below)
        creator_tag = (group << 16) | (element >> 8)
        creator = ds.get(creator_tag)
        creator_name = str(creator.value).strip().upper() if creator is not None else ""
        if (creator_name, group, element & 0xFF) in self.safe_private and elem.VR != "SQ":
            self.report.private_kept += 1
            creators_used.add(creator_tag)
            return
        self.report.private_removed += 1
        del ds[tag]

    def _action(self, tag: int, rule: Rule) -> str:
        action = self.actions.get(tag)
        if action is None:
            action = self.actions[tag] = _resolve(rule.action(self.ctx.options))
        return action

    @staticmethod
    def _drop_unused_creators(ds: Dataset, creators_used: set[int]) -> None:
        for tag in list(ds.keys()):
            if (tag >> 16) & 1 and 0x0010 <= (tag & 0xFFFF) <= 0x00FF and tag not in creators_used:
                del ds[tag]


def _identifying_strings(ds: Dataset) -> list[str]:
    """The patient's own names and numbers, to scrub from free text under Clean Descriptors."""
    tokens: set[str] = set()
    for keyword in PATIENT_IDENTITY_KEYWORDS:
        value = ds.get(keyword)
        if value in (None, ""):
            continue
        values = value if isinstance(value, list | tuple) or getattr(value, "VM", 1) > 1 else [value]
        for single in values:
            text = str(single)
            tokens.add(text.replace("^", " ").strip())
            tokens.update(part for part in re.split(r"[\^\s,]+", text) if len(part) >= 3)
    birth_date = ds.get("PatientBirthDate")
    if birth_date:
        tokens.add(str(birth_date))
    return [token for token in tokens if len(token) >= 3]


def burned_in_suspected(ds: Dataset) -> bool:
    """Say whether the pixels may carry burned-in text: declared, or typical of the modality/SOP class."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return True
    if str(ds.get("Modality", "")).upper() in BURNED_IN_MODALITIES:
        return True
    if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX):
        return True
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return "SECONDARY" in image_type and "SCREEN SAVE" in " ".join(image_type)


def _blank_pixels(ds: Dataset, rectangles: tuple[PixelRectangle, ...]) -> None:
    """Blank rectangles in every frame; compressed pixel data is stored uncompressed afterwards."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    multi_frame = int(ds.get("NumberOfFrames", 1) or 1) > 1
    pixels = ds.pixel_array.copy()
    frames = pixels if multi_frame else pixels[None, ...]
    for rect in rectangles:
        frames[:, rect.y : rect.y + rect.height, rect.x : rect.x + rect.width, ...] = frames.min()
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = (frames if multi_frame else frames[0]).tobytes()


def uid_derive(secret: bytes, uid: str) -> str:
    """Derive a replacement UID from a secret and the original: stable, unguessable, valid (2.25 root)."""
    digest = hmac.new(secret, uid.encode(), hashlib.sha256).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _method_description(options: frozenset[str], pixels_cleaned: bool) -> list[str]:
    names = ["PS3.15 Basic Application Confidentiality Profile"]
    names += [OPTION_CODES[option][1] for option in sorted(options) if option in OPTION_CODES]
    if pixels_cleaned:
        names.append(OPTION_CODES["clean_pixel_data"][1])
    return [name[:64] for name in names]


def _method_codes(options: frozenset[str], pixels_cleaned: bool) -> Sequence:
    keys = ["basic", *sorted(o for o in options if o in OPTION_CODES)]
    if pixels_cleaned:
        keys.append("clean_pixel_data")
    items = []
    for key in keys:
        code, meaning = OPTION_CODES[key]
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning[:64]
        items.append(item)
    return Sequence(items)


def deidentify(ds: Dataset, ctx: DeidentifyContext) -> DeidentifyReport:
    """De-identify a dataset in place per PS3.15 Annex E under ``ctx.options``, and report what was done.

    The pixels are changed only where ``ctx.pixel_rectangles`` asks; images that may carry burned-in
    text and were not blanked are reported as needing review.
    """
    profile = load_profile()
    walker = _Walker(ctx, profile, _identifying_strings(ds))
    report = walker.report
    report.burned_in_suspected = burned_in_suspected(ds)
    if ctx.pixel_rectangles and "PixelData" in ds:
        try:
            _blank_pixels(ds, ctx.pixel_rectangles)
            report.pixels_cleaned = True
        except Exception as exc:  # noqa: BLE001 - any decoder failure leaves the image flagged for review
            report.pixel_clean_error = f"{type(exc).__name__}: {exc}"[:200]

    walker.walk(ds)

    _replace(ds, "PatientName", ctx.pseudonym)
    _replace(ds, "PatientID", ctx.pseudonym)
    _replace(ds, "PatientIdentityRemoved", "YES")
    _replace(ds, "DeidentificationMethod", _method_description(ctx.options, report.pixels_cleaned))
    _replace(ds, "DeidentificationMethodCodeSequence", _method_codes(ctx.options, report.pixels_cleaned))
    if Option.RETAIN_LONG_FULL_DATES in ctx.options:
        _replace(ds, "LongitudinalTemporalInformationModified", "UNMODIFIED")
    elif Option.RETAIN_LONG_MODIFIED_DATES in ctx.options:
        _replace(ds, "LongitudinalTemporalInformationModified", "MODIFIED")
    else:
        _replace(ds, "LongitudinalTemporalInformationModified", "REMOVED")
    if report.pixels_cleaned:
        _replace(ds, "BurnedInAnnotation", "NO")
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None and "SOPInstanceUID" in ds:
        _replace(file_meta, "MediaStorageSOPInstanceUID", ds.SOPInstanceUID)
    return report


def _replace(ds: Dataset, keyword: str, value: object) -> None:
    """Set an attribute anew, with the dictionary's VR: the file's own element may carry a wrong or
    unknown VR (UN, or a damaged one) that the new value could not be written with."""
    if keyword in ds:
        delattr(ds, keyword)
    setattr(ds, keyword, value)


__all__ = ["DeidentifyContext", "DeidentifyReport", "PixelRectangle", "Tag", "burned_in_suspected", "deidentify", "uid_derive"]

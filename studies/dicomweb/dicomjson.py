"""Small helpers that turn index values into DICOM JSON (PS3.18 F.2) elements."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree


def element(vr: str, value: Any) -> dict[str, Any]:
    """Return one DICOM JSON element; empty values become an element without ``Value``."""
    return renderer(vr)(value)


Renderer = Callable[[Any], dict[str, Any]]


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == []


@functools.cache
def renderer(vr: str, *, multi_valued: bool = False) -> Renderer:
    """What :func:`element` (or :func:`multi`) does for one VR, chosen once: a search answer renders the
    same attributes on every row, so the VR is looked at once per attribute rather than once per value."""
    if multi_valued:
        return lambda value: multi(vr, value or "")

    def rendered(convert: Callable[[Any], Any]) -> Renderer:
        return lambda value: {"vr": vr} if _empty(value) else {"vr": vr, "Value": [convert(value)]}

    if vr == "PN":
        return rendered(person_name)
    if vr == "DA":
        return rendered(
            lambda value: f"{value.year:04d}{value.month:02d}{value.day:02d}"
            if isinstance(value, datetime.date) else str(value)
        )
    if vr == "TM":
        return rendered(_time_text)
    if vr in {"IS", "US", "UL", "SL", "SS"}:
        return rendered(int)
    return lambda value: (
        {"vr": vr} if _empty(value)
        else {"vr": vr, "Value": list(value)} if isinstance(value, (list, tuple))
        else {"vr": vr, "Value": [value]}
    )


def _time_text(value: Any) -> str:
    if not isinstance(value, datetime.time):
        return str(value)
    text = value.strftime("%H%M%S")
    return text + f".{value.microsecond:06d}" if value.microsecond else text


def person_name(value: str) -> dict[str, str]:
    """A PN value as DICOM JSON (PS3.18 F.2.2): its component groups apart, empty ones left out."""
    if "=" not in value:
        return {"Alphabetic": value}
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False))
    return {name: text for name, text in groups.items() if text}


def multi(vr: str, backslashed: str) -> dict[str, Any]:
    """Return a multi-valued element from a backslash-separated index value."""
    values = [item for item in backslashed.split("\\") if item]
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def to_native_xml(dataset: dict[str, Any]) -> bytes:
    """Write a DICOM JSON data set as the PS3.19 Native DICOM Model (``application/dicom+xml``).

    Covers what our answers hold (strings, numbers, URLs, sequences); PN values keep their Alphabetic
    group only.
    """
    root = ElementTree.Element("NativeDicomModel", {"xmlns": "http://dicom.nema.org/PS3.19/models/NativeDICOM"})
    _xml_attributes(root, dataset)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root, encoding="utf-8")


def _xml_attributes(parent: ElementTree.Element, dataset: dict[str, Any]) -> None:
    for tag, item in sorted(dataset.items()):
        vr = item.get("vr", "UN")
        attribute = ElementTree.SubElement(parent, "DicomAttribute", {"tag": tag, "vr": vr})
        for number, value in enumerate(item.get("Value", []), start=1):
            if vr == "SQ":
                child = ElementTree.SubElement(attribute, "Item", {"number": str(number)})
                _xml_attributes(child, value)
            elif vr == "PN":
                name = ElementTree.SubElement(attribute, "PersonName", {"number": str(number)})
                ElementTree.SubElement(ElementTree.SubElement(name, "Alphabetic"), "FamilyName").text = str(
                    value.get("Alphabetic", "") if isinstance(value, dict) else value
                )
            else:
                ElementTree.SubElement(attribute, "Value", {"number": str(number)}).text = str(value)

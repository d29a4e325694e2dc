"""Small helpers that turn index values into DICOM JSON (PS3.18 F.2) elements."""

from __future__ import annotations

import datetime
from typing import Any


def element(vr: str, value: Any) -> dict[str, Any]:
    """Return one DICOM JSON element; empty values become an element without ``Value``."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [person_name(value)]}
    if vr == "DA":
        return {"vr": vr, "Value": [value.strftime("%Y%m%d") if isinstance(value, datetime.date) else str(value)]}
    if vr == "TM":
        if isinstance(value, datetime.time):
            text = value.strftime("%H%M%S")
            if value.microsecond:
                text += f".{value.microsecond:06d}"
            return {"vr": vr, "Value": [text]}
        return {"vr": vr, "Value": [str(value)]}
    if vr in {"IS", "US", "UL", "SL", "SS"}:
        return {"vr": vr, "Value": [int(value)]}
    if isinstance(value, (list, tuple)):
        return {"vr": vr, "Value": list(value)}
    return {"vr": vr, "Value": [value]}


def person_name(value: str) -> dict[str, str]:
    """A PN value as DICOM JSON (PS3.18 F.2.2): its component groups apart, empty ones left out."""
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False))
    return {name: text for name, text in groups.items() if text}


def multi(vr: str, backslashed: str) -> dict[str, Any]:
    """Return a multi-valued element from a backslash-separated index value."""
    values = [item for item in backslashed.split("\\") if item]
    return {"vr": vr, "Value": values} if values else {"vr": vr}

"""How people's names are shown: one format everywhere (pages, viewers, share links)."""

from __future__ import annotations


def person_name_display(value: str) -> str:
    """Show a DICOM PN ("SMITH^JOHN^^DR") as "SMITH, JOHN DR" (the alphabetic group only)."""
    parts = (value or "").split("=")[0].split("^")
    family, rest = parts[0].strip(), [part.strip() for part in parts[1:] if part.strip()]
    if not rest:
        return family
    return f"{family}, {' '.join(rest)}" if family else " ".join(rest)

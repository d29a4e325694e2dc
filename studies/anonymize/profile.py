"""The de-identification profile of DICOM PS3.15 Annex E, loaded from data.

``data/ps3.15-annex-e.csv`` is a machine-readable copy of Table E.1-1 (provenance in
``data/README.md``); ``data/ps3.15-annex-e-2026d-additions.csv`` adds the rows of the 2026d edition.
This module turns those rows into rules: for every tag (or tag mask), the action of the Basic
Profile and the action each option changes it to. Nothing about individual attributes is coded here.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"


class Option(StrEnum):
    """Profile options, named by their column in the table; values are the DCM codes of PS3.16 CID 7050."""

    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_UIDS = "retain_uids"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_LONG_FULL_DATES = "retain_long_full_dates"
    RETAIN_LONG_MODIFIED_DATES = "retain_long_modified_dates"
    CLEAN_DESCRIPTORS = "clean_descriptors"


OPTION_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONG_FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    Option.RETAIN_LONG_MODIFIED_DATES: ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
}

# When two selected options speak of one attribute, keeping wins over cleaning: each option is asked for
# by name, and cleaning what another option asked to keep would undo that request.
ACTION_PRECEDENCE = {"K": 0, "C": 1}

_OPTION_VALUE = re.compile(r"(\w+)=([A-Z/]+)")


@dataclass(frozen=True)
class Rule:
    """What to do with one attribute (or a mask of them): the Basic Profile action and option overrides."""

    tag: str
    keyword: str
    basic: str
    overrides: dict[str, str] = field(default_factory=dict)

    def action(self, options: frozenset[str]) -> str:
        chosen = [self.overrides[o] for o in options if o in self.overrides]
        if not chosen:
            return self.basic
        return min(chosen, key=lambda action: ACTION_PRECEDENCE.get(action, 9))


@dataclass(frozen=True)
class Profile:
    exact: dict[int, Rule]
    masks: tuple[tuple[int, int, Rule], ...]  # (mask, value, rule): tag & mask == value
    private: Rule

    def rule_for(self, tag: int) -> Rule | None:
        if tag >> 16 & 1:
            return self.private
        rule = self.exact.get(tag)
        if rule is not None:
            return rule
        for mask, value, masked_rule in self.masks:
            if tag & mask == value:
                return masked_rule
        return None


def _mask(tag_text: str) -> tuple[int, int]:
    hex_digits = tag_text.replace(",", "")
    mask = int("".join("0" if ch.lower() == "x" else "F" for ch in hex_digits), 16)
    value = int("".join("0" if ch.lower() == "x" else ch for ch in hex_digits), 16)
    return mask, value


@cache
def load_profile() -> Profile:
    """Read Table E.1-1 (with the 2026d additions) into rules."""
    exact: dict[int, Rule] = {}
    masks: list[tuple[int, int, Rule]] = []
    private: Rule | None = None
    with open(DATA_DIR / "ps3.15-annex-e.csv", newline="") as table:
        for row in csv.DictReader(table):
            overrides = {option.value: row[option.value] for option in Option if row.get(option.value)}
            rule = Rule(tag=row["tag"], keyword=row["keyword"], basic=row["basic_profile_action"], overrides=overrides)
            if row["tag"].lower() == "gggg,eeee":
                private = rule
            elif "x" in row["tag"].lower():
                masks.append((*_mask(row["tag"]), rule))
            else:
                exact[int(row["tag"].replace(",", ""), 16)] = rule
    with open(DATA_DIR / "ps3.15-annex-e-2026d-additions.csv", newline="") as additions:
        for row in csv.DictReader(additions):
            tag = int(row["tag"].replace(",", ""), 16)
            if tag in exact:
                continue
            overrides = {
                name: action
                for name, action in _OPTION_VALUE.findall(row["option_codes_seen"])
                if name in Option._value2member_map_
            }
            exact[tag] = Rule(tag=row["tag"], keyword=row["keyword"], basic=row["basic_profile_action"], overrides=overrides)
    if private is None:
        raise RuntimeError("The Annex E table has no row for private attributes.")
    return Profile(exact=exact, masks=tuple(masks), private=private)


@cache
def load_safe_private() -> frozenset[tuple[str, int, int]]:
    """Private attributes known to carry no identity (kept under Retain Safe Private), from data."""
    safe: set[tuple[str, int, int]] = set()
    with open(DATA_DIR / "safe-private-attributes.csv", newline="") as table:
        for row in csv.DictReader(table):
            safe.add((row["creator"].strip().upper(), int(row["group"], 16), int(row["element"], 16)))
    return frozenset(safe)

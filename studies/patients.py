"""The one rule for whether a Patient ID tells who the patient is (index, rebuild, anonymization pseudonyms).

An empty Patient ID (Type 2: not known) says nothing about the patient, and neither does a placeholder
that modalities and emergency workflows send instead ("UNKNOWN", "0", ...): two unidentified people
sharing one must not become one patient. Such patients are told apart by name and birth date instead,
while the ID value itself is still stored, shown and matched by queries.
"""

from __future__ import annotations

from django.conf import settings


def placeholder_patient_ids() -> frozenset[str]:
    """The configured placeholder Patient IDs (``PLACEHOLDER_PATIENT_IDS``), trimmed and case-folded."""
    return frozenset(p.strip().casefold() for p in settings.PLACEHOLDER_PATIENT_IDS if p.strip())


def patient_id_identifies(patient_id: str) -> bool:
    """Say whether a Patient ID identifies its patient: neither empty nor a configured placeholder.

    Compared after trimming and without case, so "unknown " is the placeholder "UNKNOWN".
    """
    value = patient_id.strip().casefold()
    return bool(value) and value not in placeholder_patient_ids()

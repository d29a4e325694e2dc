"""The one builder of clinics, users, tokens and stored studies for tests: plain functions with valid defaults."""

from __future__ import annotations

import itertools
from datetime import date
from pathlib import Path

from studies.ingest import instance_ingest
from studies.models import Instance, Patient, Study
from tenants import services
from tenants.models import Clinic, Membership, User
from tenants.roles import Role

PASSWORD = "Correct-Horse-42!"
_counter = itertools.count(1)


def make_user(*, email: str | None = None, password: str = PASSWORD, **extra: object) -> User:
    email = email or f"user{next(_counter)}@example.org"
    return User.objects.create_user(email, password, **extra)


def make_clinic(*, name: str | None = None, slug: str | None = None, owner: User | None = None) -> Clinic:
    number = next(_counter)
    return services.clinic_create(
        name=name or f"Clinic {number}", slug=slug or f"clinic-{number}", owner=owner or make_user()
    )


def make_member(*, clinic: Clinic, role: str = Role.CLINICIAN, user: User | None = None) -> User:
    user = user or make_user()
    Membership.objects.create(clinic=clinic, user=user, role=role)
    return user


def token_for(clinic: Clinic, role: str = "clinician") -> str:
    """The secret of a new API token of ``clinic`` with ``role`` (a name of its own: names are unique)."""
    return services.api_token_create(clinic=clinic, name=f"dicomweb-{role}-{next(_token_numbers)}", role=role).secret


_token_numbers = itertools.count(1)


def make_study(
    *,
    clinic: Clinic,
    patient_name: str = "DOE^JANE",
    patient_id: str | None = None,
    birth_date: date | None = date(1970, 1, 2),
    sex: str = "F",
    **fields: object,
) -> Study:
    """Create a patient (or reuse one by ID) and a study row, without any stored object."""
    number = next(_counter)
    patient, _ = Patient.objects.get_or_create(
        clinic=clinic,
        patient_id=patient_id or f"PID{number:06d}",
        issuer_of_patient_id="",
        defaults={"patient_name": patient_name, "patient_birth_date": birth_date, "patient_sex": sex},
    )
    fields.setdefault("study_instance_uid", f"1.2.826.0.1.3680043.10.1.{number}")
    fields.setdefault("study_date", date(2024, 1, 1))
    fields.setdefault("modalities_in_study", "CT")
    return Study.objects.create(clinic=clinic, patient=patient, patient_name=patient.patient_name, **fields)


def ingest_files(clinic: Clinic, paths: list[Path], *, source: str = "upload") -> list[Instance]:
    """Store and index files through the real ingest service; return their instances."""
    return [instance_ingest(clinic=clinic, source_path=str(path), source=source).instance for path in paths]

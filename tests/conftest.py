"""Shared fixtures: the standard cast of every view and API test.

``clinic`` and ``other_clinic``; ``owner``, ``admin``, ``clinician``, ``uploader`` and ``billing_admin``
belong to ``clinic``; ``outsider`` belongs to ``other_clinic`` only.
"""

from __future__ import annotations

import pytest

from tenants.models import Clinic, User
from tenants.roles import Role
from tests.factories import make_clinic, make_member, make_user


@pytest.fixture(autouse=True)
def _mail_in_memory(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture
def owner(db) -> User:
    return make_user(email="owner@clinic-a.example", full_name="Olivia Owner")


@pytest.fixture
def clinic(owner) -> Clinic:
    return make_clinic(name="Clinic A", slug="clinic-a", owner=owner)


@pytest.fixture
def other_clinic(db) -> Clinic:
    return make_clinic(name="Clinic B", slug="clinic-b", owner=make_user(email="owner@clinic-b.example"))


@pytest.fixture
def admin(clinic) -> User:
    return make_member(clinic=clinic, role=Role.ADMIN, user=make_user(email="admin@clinic-a.example"))


@pytest.fixture
def clinician(clinic) -> User:
    return make_member(clinic=clinic, role=Role.CLINICIAN, user=make_user(email="doctor@clinic-a.example"))


@pytest.fixture
def uploader(clinic) -> User:
    return make_member(clinic=clinic, role=Role.UPLOADER, user=make_user(email="tech@clinic-a.example"))


@pytest.fixture
def billing_admin(clinic) -> User:
    return make_member(clinic=clinic, role=Role.BILLING, user=make_user(email="billing@clinic-a.example"))


@pytest.fixture
def outsider(other_clinic) -> User:
    return make_member(clinic=other_clinic, role=Role.OWNER, user=make_user(email="outsider@clinic-b.example"))

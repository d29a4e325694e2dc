"""Plain factory functions with valid defaults."""

from __future__ import annotations

import itertools

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

"""Reads about clinics, members and tokens."""

from __future__ import annotations

from django.db.models import QuerySet

from tenants.models import ApiToken, Clinic, Membership, User
from tenants.secrets import secret_hash


def api_token_get_active(*, raw_token: str) -> ApiToken | None:
    """Return the active token matching the presented secret, with its clinic, or None."""
    if not raw_token:
        return None
    return (
        ApiToken.objects.select_related("clinic")
        .filter(token_hash=secret_hash(raw_token), revoked_at__isnull=True)
        .first()
    )


def membership_get(*, clinic: Clinic, user: User) -> Membership | None:
    return Membership.objects.for_clinic(clinic).select_related("user").filter(user=user).first()


def clinic_list_for_user(*, user: User) -> QuerySet[Clinic]:
    return Clinic.objects.filter(memberships__user=user).order_by("name")

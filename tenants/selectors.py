"""Reads about clinics, members and tokens."""

from __future__ import annotations

from importlib import import_module
from uuid import UUID

from django.conf import settings
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal import prepared
from tenants.models import ApiToken, Clinic, Invitation, Membership, User, UserSession
from tenants.secrets import secret_hash

_TOKEN_FIELDS = tuple(f.attname for f in ApiToken._meta.concrete_fields)
_CLINIC_FIELDS = tuple(f.attname for f in Clinic._meta.concrete_fields)
_MEMBERSHIP_FIELDS = tuple(f.attname for f in Membership._meta.concrete_fields)


def _active_token_rows(*, token_hash: str) -> QuerySet:
    return ApiToken.objects.filter(token_hash=token_hash, revoked_at__isnull=True).values(
        *_TOKEN_FIELDS, *(f"clinic__{name}" for name in _CLINIC_FIELDS)
    )


def api_token_get_active(*, raw_token: str) -> ApiToken | None:
    """Return the active token matching the presented secret, with its clinic, or None.

    Every API request asks this, so the statement (one row by the unique token hash, joined to its
    clinic) is compiled once (portal.prepared); it is still asked of the database each time, so a
    revoked token stops working at once in every process.
    """
    if not raw_token:
        return None
    rows = prepared.rows("api_token_get_active", _active_token_rows, token_hash=secret_hash(raw_token))
    if not rows:
        return None
    token = prepared.model_from_row(ApiToken, rows[0], _TOKEN_FIELDS)
    token.clinic = prepared.model_from_row(Clinic, rows[0], _CLINIC_FIELDS, prefix="clinic__")
    return token


def _membership_rows(*, slug: str, user_id: int) -> QuerySet:
    return Membership.objects.filter(clinic__slug=slug, user_id=user_id).values(
        *_MEMBERSHIP_FIELDS, *(f"clinic__{name}" for name in _CLINIC_FIELDS)
    )


def membership_get_by_slug(*, slug: str, user: User) -> Membership | None:
    """The user's membership of the clinic ``slug`` names, with its clinic (and ``user``), or None.

    Every request of a signed-in user inside a clinic asks this: one statement, compiled once
    (portal.prepared), instead of the clinic and then the membership.
    """
    rows = prepared.rows("membership_get_by_slug", _membership_rows, slug=slug, user_id=user.pk)
    if not rows:
        return None
    membership = prepared.model_from_row(Membership, rows[0], _MEMBERSHIP_FIELDS)
    membership.clinic = prepared.model_from_row(Clinic, rows[0], _CLINIC_FIELDS, prefix="clinic__")
    membership.user = user
    return membership


def clinic_list_for_user(*, user: User) -> QuerySet[Clinic]:
    return Clinic.objects.filter(memberships__user=user).order_by("name")


def member_list(*, clinic: Clinic) -> QuerySet[Membership]:
    """The clinic's members, each with ``api_token_count``: the active tokens they created here."""
    tokens = (
        ApiToken.objects.for_clinic(clinic)
        .filter(created_by=OuterRef("user"), revoked_at__isnull=True)
        .order_by()
        .values("created_by")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        Membership.objects.for_clinic(clinic)
        .select_related("user")
        .annotate(api_token_count=Coalesce(Subquery(tokens), 0))
        .order_by("user__email")
    )


def api_token_list_created_by(*, clinic: Clinic, user: User) -> QuerySet[ApiToken]:
    """The clinic's active API tokens that this user created."""
    return ApiToken.objects.for_clinic(clinic).filter(created_by=user, revoked_at__isnull=True)


def member_get(*, clinic: Clinic, user_uuid: UUID | str) -> Membership | None:
    return Membership.objects.for_clinic(clinic).select_related("user", "clinic").filter(user__uuid=user_uuid).first()


def invitation_list_pending(*, clinic: Clinic) -> QuerySet[Invitation]:
    return (
        Invitation.objects.for_clinic(clinic)
        .filter(accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now())
        .select_related("invited_by")
        .order_by("-created_at")
    )


def invitation_get_by_token(*, token: str) -> Invitation | None:
    """The invitation a link points at (any clinic: the secret itself is the credential)."""
    return Invitation.objects.select_related("clinic").filter(token_hash=secret_hash(token)).first()


def api_token_list(*, clinic: Clinic) -> QuerySet[ApiToken]:
    return ApiToken.objects.for_clinic(clinic).select_related("created_by").order_by("revoked_at", "-created_at")


def user_has_two_factor(*, user: User) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def recovery_code_count(*, user: User) -> int:
    """How many unused recovery codes the user has."""
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()


def user_session_count(*, user: User) -> int:
    """How many of the user's sign-ins are still open, on any device."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    keys = UserSession.objects.filter(user=user).values_list("session_key", flat=True)
    return sum(1 for key in keys if store().exists(key))


def clinics_requiring_two_factor(*, user: User) -> QuerySet[Clinic]:
    return Clinic.objects.filter(memberships__user=user, require_two_factor=True).order_by("name")

"""State changes for clinics, members, invitations, API tokens and sessions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.text import slugify

from portal.exceptions import PortalError
from tenants.audit import audit_record
from tenants.models import ApiToken, Clinic, Membership, User
from tenants.roles import Role
from tenants.secrets import new_secret, secret_hash

# How often a token's use is written down; every request would flood the trail.
TOKEN_USE_RECORD_INTERVAL = timedelta(minutes=5)


def default_ae_title(slug: str) -> str:
    """The clinic's called AE title by default: its slug, upper-cased, at most 16 characters."""
    return slug.upper().replace("-", "_")[:16]


@transaction.atomic
def clinic_create(
    *, name: str, slug: str = "", owner: User, ae_title: str = "", request: HttpRequest | None = None
) -> Clinic:
    """Create a clinic with its owner.

    Raises PortalError when the slug or AE title is already taken.
    """
    slug = slug or slugify(name)[:50]
    ae_title = (ae_title or default_ae_title(slug)).strip()
    if not slug:
        raise PortalError("The clinic needs a name made of letters or digits.")
    if Clinic.objects.filter(slug=slug).exists():
        raise PortalError(f"The address '{slug}' is already taken; choose another.")
    if Clinic.objects.filter(ae_title=ae_title).exists():
        raise PortalError(f"The AE title '{ae_title}' is already used by another clinic.")
    clinic = Clinic.objects.create(
        name=name, slug=slug, ae_title=ae_title, quota_bytes=settings.DEFAULT_CLINIC_QUOTA_BYTES
    )
    Membership.objects.create(clinic=clinic, user=owner, role=Role.OWNER)
    audit_record(clinic=clinic, action="clinic.created", request=request, actor=owner, object_type="clinic",
                 object_id=str(clinic.uuid))
    return clinic


@dataclass(frozen=True)
class NewApiToken:
    token: ApiToken
    secret: str


@transaction.atomic
def api_token_create(
    *, clinic: Clinic, name: str, role: str, created_by: User | None = None, request: HttpRequest | None = None
) -> NewApiToken:
    """Create an API token; its secret is returned here once and only its hash is kept."""
    if role not in Role.values:
        raise PortalError(f"Unknown role '{role}'. Choose one of: {', '.join(Role.values)}.")
    secret = new_secret("pacs_")
    token = ApiToken.objects.create(
        clinic=clinic, name=name, role=role, token_hash=secret_hash(secret), prefix=secret[:9], created_by=created_by
    )
    audit_record(clinic=clinic, action="api_token.created", request=request, actor=created_by,
                 object_type="api_token", object_id=str(token.uuid), details={"name": name, "role": role})
    return NewApiToken(token=token, secret=secret)


def api_token_revoke(*, token: ApiToken, request: HttpRequest | None = None) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(clinic=token.clinic, action="api_token.revoked", request=request, object_type="api_token",
                     object_id=str(token.uuid))
    return token


def api_token_mark_used(*, token: ApiToken, request: HttpRequest) -> None:
    """Record that a token was used: last-used time, and an audit entry at most every few minutes."""
    now = timezone.now()
    if token.last_used_at is not None and now - token.last_used_at < TOKEN_USE_RECORD_INTERVAL:
        return
    # Conditional update, so that concurrent requests write one audit entry, not several.
    updated = ApiToken.objects.filter(pk=token.pk, last_used_at=token.last_used_at).update(last_used_at=now)
    token.last_used_at = now
    if updated:
        audit_record(clinic=token.clinic, action="api_token.used", request=request, object_type="api_token",
                     object_id=str(token.uuid))


def session_expire(*, request: HttpRequest) -> None:
    """Write down that a browser session ran out (idle or absolute limit)."""
    user = request.user
    for membership in Membership.objects.filter(user=user).select_related("clinic"):
        audit_record(clinic=membership.clinic, action="auth.session_expired", request=request,
                     object_type="user", object_id=str(user.uuid))  # type: ignore[union-attr]

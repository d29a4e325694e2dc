"""State changes for clinics, members, invitations, API tokens and sessions."""

from __future__ import annotations

import base64
import hashlib
import logging
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module

from axes.utils import reset as axes_reset
from django.conf import settings
from django.contrib.auth import password_validation
from django.contrib.auth.hashers import make_password
from django.contrib.sessions.backends.base import SessionBase
from django.core import signing
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.exceptions import Conflict, NotAllowed, PortalError
from tenants import selectors
from tenants.ae_titles import ae_title_clean, default_ae_title
from tenants.audit import Actor, audit_record, client_address
from tenants.models import ApiToken, Clinic, Invitation, Membership, User, UserSession
from tenants.roles import ROLE_ACTIONS, Role
from tenants.secrets import new_secret, secret_hash

logger = logging.getLogger(__name__)

# How often a token's use is written down; every request would flood the trail.
TOKEN_USE_RECORD_INTERVAL = timedelta(minutes=5)


# What the apps above tenants do when a clinic is created, in its transaction (billing: start the trial).
# Registered once at start-up by their AppConfig.ready, so tenants never imports them.
# Called as hook(clinic=clinic).
ClinicCreated = Callable[..., object]
_clinic_created: list[ClinicCreated] = []


def clinic_created_register(hook: ClinicCreated) -> None:
    """Add a step run in clinic_create's transaction, after the owner's membership (idempotent)."""
    if hook not in _clinic_created:
        _clinic_created.append(hook)


@transaction.atomic
def clinic_create(
    *, name: str, slug: str = "", owner: User, ae_title: str = "", by: Actor | None = None
) -> Clinic:
    """Create a clinic with its owner.

    Raises PortalError when the slug or AE title is already taken.
    """
    slug = slug or slugify(name)[:50]
    if not slug:
        raise PortalError("The clinic needs a name made of letters or digits.")
    if Clinic.objects.filter(slug=slug).exists():
        raise PortalError(f"The address '{slug}' is already taken; choose another.")
    ae_title = ae_title_clean(ae_title or default_ae_title(slug))
    if Clinic.objects.filter(ae_title=ae_title).exists():
        raise PortalError(f"The AE title '{ae_title}' is already used by another clinic.")
    clinic = Clinic.objects.create(
        name=name, slug=slug, ae_title=ae_title, quota_bytes=settings.DEFAULT_CLINIC_QUOTA_BYTES
    )
    Membership.objects.create(clinic=clinic, user=owner, role=Role.OWNER)
    for hook in _clinic_created:
        hook(clinic=clinic)
    audit_record(clinic=clinic, action="clinic.created", by=by, actor=owner, object_type="clinic",
                 object_id=str(clinic.uuid))
    return clinic


@dataclass(frozen=True)
class NewApiToken:
    token: ApiToken
    secret: str


@transaction.atomic
def api_token_create(
    *,
    clinic: Clinic,
    name: str,
    role: str,
    created_by: User | None = None,
    by: Actor | None = None,
    granted_by: Membership | ApiToken | None = None,
) -> NewApiToken:
    """Create an API token; its secret is returned here once and only its hash is kept.

    ``granted_by`` is the member (or token) asking; a token cannot get rights its creator lacks.
    """
    if role not in Role.values:
        raise PortalError(f"Unknown role '{role}'. Choose one of: {', '.join(Role.values)}.")
    name = name.strip()
    if not name:
        raise PortalError("Give the token a name, so that you can tell it apart later.")
    # The audit trail names a token by its name: two of one name, revoked ones included, could not be told apart.
    if ApiToken.objects.for_clinic(clinic).filter(name__iexact=name).exists():
        raise PortalError(f"The clinic already has a token named '{name}' (revoked tokens count: the audit trail "
                          "names tokens by name). Choose another name.")
    _check_may_grant(granted_by=granted_by, role=role)
    secret = new_secret("pacs_")
    token = ApiToken.objects.create(
        clinic=clinic, name=name, role=role, token_hash=secret_hash(secret), prefix=secret[:9], created_by=created_by
    )
    audit_record(clinic=clinic, action="api_token.created", by=by, actor=created_by,
                 object_type="api_token", object_id=str(token.uuid), details={"name": name, "role": role})
    return NewApiToken(token=token, secret=secret)


def api_token_revoke(
    *, token: ApiToken, granted_by: Membership | ApiToken | None, by: Actor | None = None
) -> ApiToken:
    """Revoke an API token; whatever uses it stops working with its next request.

    ``granted_by`` is the member (or token) asking. Raises NotAllowed when the token, or the member who made
    it, has rights the asker lacks (an admin cannot revoke an owner's token), unless the asker holds it.
    """
    _check_may_revoke(granted_by=granted_by, token=token)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(clinic=token.clinic, action="api_token.revoked", by=by, object_type="api_token",
                     object_id=str(token.uuid))
    return token


def api_token_use_is_due(*, token: ApiToken) -> bool:
    """Say whether this use of the token is to be recorded (the last record is a few minutes old)."""
    return token.last_used_at is None or timezone.now() - token.last_used_at >= TOKEN_USE_RECORD_INTERVAL


def api_token_mark_used(*, token: ApiToken, by: Actor) -> None:
    """Record that a token was used: last-used time, and an audit entry at most every few minutes."""
    now = timezone.now()
    if not api_token_use_is_due(token=token):
        return
    # Conditional update, so that concurrent requests write one audit entry, not several.
    updated = ApiToken.objects.filter(pk=token.pk, last_used_at=token.last_used_at).update(last_used_at=now)
    token.last_used_at = now
    if updated:
        audit_record(clinic=token.clinic, action="api_token.used", by=by, object_type="api_token",
                     object_id=str(token.uuid))


def session_expire(*, request: HttpRequest) -> None:
    """Write down that a browser session ran out (idle or absolute limit)."""
    user = request.user
    if not isinstance(user, User):
        return  # an anonymous session has no member to write it down for
    for membership in Membership.objects.filter(user=user).select_related("clinic"):
        audit_record(clinic=membership.clinic, action="auth.session_expired", by=Actor.from_request(request),
                     object_type="user", object_id=str(user.uuid))


# --- roles ---------------------------------------------------------------------------------------


def _rights_within(role: str, limit: str) -> bool:
    """Say whether every right of ``role`` is one of ``limit``'s."""
    return ROLE_ACTIONS.get(role, frozenset()) <= ROLE_ACTIONS.get(limit, frozenset())


def _check_may_grant(*, granted_by: Membership | ApiToken | None, role: str) -> None:
    """Refuse to hand out a role with rights the granting member does not have (no escalation)."""
    if granted_by is None:
        return  # the system itself: sign-up, management commands
    if not _rights_within(role, granted_by.role):
        raise NotAllowed(f"Only an owner can give the {Role(role).label} role: it has rights your role lacks.")


def _check_may_manage(*, granted_by: Membership | ApiToken | None, membership: Membership) -> None:
    if granted_by is None:
        return
    if not _rights_within(membership.role, granted_by.role):
        raise NotAllowed(f"Only an owner can change or remove a member whose role is {membership.get_role_display()}.")


def _holds(granted_by: Membership | ApiToken, token: ApiToken) -> bool:
    # A token acts only for itself; a member holds the tokens they made.
    if isinstance(granted_by, ApiToken):
        return granted_by.pk == token.pk
    return token.created_by_id is not None and token.created_by_id == granted_by.user_id


def _revoke_refusal(*, granted_by: Membership | ApiToken | None, token: ApiToken, maker_role: str | None) -> str:
    """Why the asker may not revoke this token ("" when it may): its role and its maker's (``maker_role``, the
    maker's current role in the clinic, None if no longer a member) must be within the asker's rights."""
    if granted_by is None or _holds(granted_by, token):
        return ""
    if not _rights_within(token.role, granted_by.role):
        return f"Only an owner can revoke a token whose role is {token.get_role_display()}."
    if maker_role is not None and not _rights_within(maker_role, granted_by.role):
        return f"Only an owner can revoke a token made by a member whose role is {Role(maker_role).label}."
    return ""


def _maker_roles(tokens: list[ApiToken]) -> dict[int, str]:
    """The current role in the clinic of each token's maker, by user id (one query)."""
    makers = {t.created_by_id for t in tokens if t.created_by_id is not None}
    if not tokens or not makers:
        return {}
    return dict(Membership.objects.for_clinic(tokens[0].clinic_id).filter(user_id__in=makers)
                .values_list("user_id", "role"))


def _check_may_revoke(*, granted_by: Membership | ApiToken | None, token: ApiToken) -> None:
    maker_role = _maker_roles([token]).get(token.created_by_id) if token.created_by_id is not None else None
    refusal = _revoke_refusal(granted_by=granted_by, token=token, maker_role=maker_role)
    if refusal:
        raise NotAllowed(refusal)


def api_tokens_revocable(*, granted_by: Membership | ApiToken | None, tokens: list[ApiToken]) -> set[int]:
    """The ids of the tokens the asker may revoke, so a page offers only what will be done."""
    roles = _maker_roles(tokens)
    return {t.pk for t in tokens if not _revoke_refusal(
        granted_by=granted_by, token=t, maker_role=roles.get(t.created_by_id) if t.created_by_id else None)}


def _lock_clinic(clinic: Clinic) -> Clinic:
    # Serialises membership changes per clinic, so two admins can't each remove "the other" last owner.
    return Clinic.objects.select_for_update().get(pk=clinic.pk)


def _owner_count(clinic: Clinic) -> int:
    return Membership.objects.for_clinic(clinic).filter(role=Role.OWNER).count()


LAST_OWNER_MESSAGE = "A clinic needs at least one owner. Make another member an owner first."


@transaction.atomic
def membership_role_change(
    *, membership: Membership, role: str, granted_by: Membership | ApiToken | None, by: Actor | None = None
) -> Membership:
    """Give a member another role.

    Raises NotAllowed when the change would escalate rights, and Conflict for the last owner. A demoted
    member's API tokens and open invitations with rights the new role lacks are revoked.
    """
    if role not in Role.values:
        raise PortalError(f"Unknown role '{role}'. Choose one of: {', '.join(Role.values)}.")
    clinic = _lock_clinic(membership.clinic)
    membership = Membership.objects.for_clinic(clinic).select_related("user").get(pk=membership.pk)
    if membership.role == role:
        return membership
    _check_may_manage(granted_by=granted_by, membership=membership)
    _check_may_grant(granted_by=granted_by, role=role)
    if membership.role == Role.OWNER and _owner_count(clinic) <= 1:
        raise Conflict(LAST_OWNER_MESSAGE)
    old_role = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    details: dict[str, object] = {"from": old_role, "to": role}
    # What the member handed out with rights the new role lacks would let them take those rights back.
    withdrawn = _grants_withdraw(clinic=clinic, user=membership.user, beyond=role)
    details.update({name: count for name, count in withdrawn.items() if count})
    audit_record(clinic=clinic, action="member.role_changed", by=by, object_type="user",
                 object_id=str(membership.user.uuid), details=details)
    return membership


def _grants_withdraw(
    *, clinic: Clinic, user: User, beyond: str | None, keep_api_tokens: bool = False
) -> dict[str, int]:
    """Revoke the clinic's API tokens and open invitations ``user`` made, the ones whose role has rights that
    ``beyond`` lacks (all of them when ``beyond`` is None: the member is gone); returns the audit's counts.

    A token or an invitation must not outlive its maker's right to make it.
    """
    roles = [r for r in Role.values if beyond is None or not _rights_within(r, beyond)]
    if not roles:
        return {}
    now = timezone.now()
    tokens = selectors.api_token_list_created_by(clinic=clinic, user=user).filter(role__in=roles)
    invitations = Invitation.objects.for_clinic(clinic).filter(
        invited_by=user, role__in=roles, accepted_at__isnull=True, revoked_at__isnull=True
    )
    counts = {"invitations_withdrawn": invitations.update(revoked_at=now)}
    if keep_api_tokens:
        counts["api_tokens_kept"] = tokens.count()
    else:
        counts["api_tokens_revoked"] = tokens.update(revoked_at=now)
    return counts


@transaction.atomic
def membership_remove(
    *,
    membership: Membership,
    granted_by: Membership | ApiToken | None,
    keep_api_tokens: bool = False,
    by: Actor | None = None,
) -> None:
    """Remove a member from a clinic; their access ends with their next request.

    The clinic's API tokens the member created are revoked with the membership (a token must not
    outlive its creator's right to make it), unless the remover explicitly keeps them; the invitations
    they sent and nobody accepted yet are withdrawn.
    Raises NotAllowed when the member outranks the remover, and Conflict for the last owner.
    """
    clinic = _lock_clinic(membership.clinic)
    membership = Membership.objects.for_clinic(clinic).select_related("user").get(pk=membership.pk)
    _check_may_manage(granted_by=granted_by, membership=membership)
    if membership.role == Role.OWNER and _owner_count(clinic) <= 1:
        raise Conflict(LAST_OWNER_MESSAGE)
    user_uuid = str(membership.user.uuid)
    membership.delete()
    details = _grants_withdraw(clinic=clinic, user=membership.user, beyond=None, keep_api_tokens=keep_api_tokens)
    audit_record(clinic=clinic, action="member.removed", by=by, object_type="user", object_id=user_uuid,
                 details=details)


# --- security policy -----------------------------------------------------------------------------


def clinic_security_update(
    *, clinic: Clinic, require_two_factor: bool, session_idle_minutes: int | None, by: Actor | None = None
) -> Clinic:
    """Change the clinic's security policy (2FA requirement, shorter idle timeout)."""
    site_minutes = settings.SESSION_IDLE_TIMEOUT.total_seconds() / 60
    if session_idle_minutes is not None and not 1 <= session_idle_minutes <= site_minutes:
        raise PortalError(f"The idle timeout must be between 1 and {int(site_minutes)} minutes.")
    before = {"require_two_factor": clinic.require_two_factor, "session_idle_minutes": clinic.session_idle_minutes}
    clinic.require_two_factor = require_two_factor
    clinic.session_idle_minutes = session_idle_minutes
    clinic.save(update_fields=["require_two_factor", "session_idle_minutes"])
    after = {"require_two_factor": require_two_factor, "session_idle_minutes": session_idle_minutes}
    if before != after:
        audit_record(clinic=clinic, action="clinic.security_changed", by=by, object_type="clinic",
                     object_id=str(clinic.uuid), details={"before": before, "after": after})
    return clinic


# --- sign-up ---------------------------------------------------------------------------------------


def _validate_new_password(*, password: str, email: str, full_name: str) -> None:
    # Validated against an unsaved user so the similarity rule sees the e-mail and name.
    password_validation.validate_password(password, user=User(email=email, full_name=full_name))


SIGNUP_CONFIRM_SALT = "tenants.signup-confirm"


def signup_token_make(*, user: User) -> str:
    return signing.dumps(str(user.uuid), salt=SIGNUP_CONFIRM_SALT)


def _signup_mail(*, template: str, email: str, context: dict[str, object]) -> None:
    body = render_to_string(template, context)
    subject, _, text = body.partition("\n")
    send_mail(subject.strip(), text.strip() + "\n", settings.DEFAULT_FROM_EMAIL, [email])


@transaction.atomic
def user_signup(
    *, clinic_name: str, clinic_slug: str, full_name: str, email: str, password: str, base_url: str,
    by: Actor | None = None,
) -> None:
    """Start a sign-up; what it answers never tells whether the address already has an account.

    A new address gets an owner account (inactive until confirmed), its clinic, and a confirmation
    link by mail. An address that already has an account gets a mail saying so (sign in, or reset
    the password) and nothing is created; a sign-up left unconfirmed gets its link again.
    Raises PortalError (nothing stored) when the clinic address or AE title is taken;
    django.core.exceptions.ValidationError when the password breaks a rule.
    """
    email = email.strip().lower()
    _validate_new_password(password=password, email=email, full_name=full_name)
    existing = User.objects.filter(email__iexact=email).first()
    clinic: Clinic | None
    if existing is None:
        user = User.objects.create_user(email, password, full_name=full_name.strip(), is_active=False)
        clinic = clinic_create(name=clinic_name.strip(), slug=clinic_slug, owner=user, by=by)
    elif not existing.is_active and existing.last_login is None:
        user, clinic = existing, Clinic.objects.filter(memberships__user=existing, memberships__role=Role.OWNER).first()
    else:
        # Hash anyway, so that an existing address takes as long to answer as a new one.
        make_password(password)
        _signup_mail(template="emails/signup_account_exists.txt", email=existing.email, context={
            "login_url": base_url + reverse("tenants:login"),
            "reset_url": base_url + reverse("tenants:password-reset"),
            "clinic_name": clinic_name.strip(),
        })
        return
    url = base_url + reverse("tenants:signup-confirm", kwargs={"token": signup_token_make(user=user)})
    # Sent inside the transaction: a mail that cannot go out undoes the sign-up, which can then be retried.
    _signup_mail(template="emails/signup_confirm.txt", email=user.email, context={
        "url": url, "clinic_name": clinic.name if clinic else clinic_name.strip(),
        "valid_days": settings.SIGNUP_CONFIRM_DAYS,
    })


def user_signup_confirm(*, token: str, by: Actor | None = None) -> tuple[User, Clinic] | None:
    """Activate the account a confirmation link names; None for a bad, expired or already used link."""
    try:
        user_uuid = signing.loads(token, salt=SIGNUP_CONFIRM_SALT, max_age=timedelta(days=settings.SIGNUP_CONFIRM_DAYS))
    except signing.BadSignature:
        return None
    with transaction.atomic():
        # Only a never-used account is activated: a link that already served, or an account an
        # operator deactivated, signs nobody in.
        activated = User.objects.filter(uuid=user_uuid, is_active=False, last_login__isnull=True).update(is_active=True)
        if not activated:
            return None
        user = User.objects.get(uuid=user_uuid)
        clinic = Clinic.objects.filter(memberships__user=user, memberships__role=Role.OWNER).order_by("pk").first()
        if clinic is not None:
            audit_record(clinic=clinic, action="auth.signup_confirmed", by=by, actor=user,
                         object_type="user", object_id=str(user.uuid))
    return (user, clinic) if clinic is not None else None


# --- invitations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewInvitation:
    invitation: Invitation
    url: str


def invitation_create(
    *,
    clinic: Clinic,
    email: str,
    role: str,
    invited_by: User | None,
    base_url: str,
    granted_by: Membership | ApiToken | None = None,
    by: Actor | None = None,
) -> NewInvitation:
    """Invite someone by e-mail; the mail carries a single-use link valid INVITATION_VALID_DAYS days.

    Raises Conflict when the address already belongs to a member, NotAllowed on escalation, and
    PortalError (invitation withdrawn) when the mail cannot be sent.
    """
    email = email.strip().lower()
    if role not in Role.values:
        raise PortalError(f"Unknown role '{role}'. Choose one of: {', '.join(Role.values)}.")
    _check_may_grant(granted_by=granted_by, role=role)
    if Membership.objects.for_clinic(clinic).filter(user__email__iexact=email).exists():
        raise Conflict(f"{email} is already a member of this clinic.")
    secret = new_secret()
    now = timezone.now()
    with transaction.atomic():
        # One open invitation per address: a new one replaces the old link.
        Invitation.objects.for_clinic(clinic).filter(
            email=email, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=now)
        invitation = Invitation.objects.create(
            clinic=clinic, email=email, role=role, token_hash=secret_hash(secret), invited_by=invited_by,
            expires_at=now + timedelta(days=settings.INVITATION_VALID_DAYS),
        )
        audit_record(clinic=clinic, action="invitation.sent", by=by, actor=invited_by,
                     object_type="invitation", object_id=str(invitation.uuid), details={"role": role})
    url = base_url.rstrip("/") + reverse("tenants:invitation-accept", kwargs={"token": secret})
    context = {"clinic": clinic, "invitation": invitation, "url": url, "invited_by": invited_by,
               "valid_days": settings.INVITATION_VALID_DAYS}
    try:
        send_mail(
            subject=render_to_string("emails/invitation_subject.txt", context).strip(),
            message=render_to_string("emails/invitation.txt", context),
            from_email=None,
            recipient_list=[email],
        )
    except (smtplib.SMTPException, OSError) as exc:
        logger.warning("invitation mail for clinic %s failed: %s", clinic.uuid, exc)
        invitation_revoke(invitation=invitation, by=by)
        raise PortalError("The invitation e-mail could not be sent; try again in a few minutes.") from exc
    return NewInvitation(invitation=invitation, url=url)


def invitation_revoke(*, invitation: Invitation, by: Actor | None = None) -> Invitation:
    if invitation.accepted_at is None and invitation.revoked_at is None:
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(clinic=invitation.clinic, action="invitation.revoked", by=by,
                     object_type="invitation", object_id=str(invitation.uuid))
    return invitation


INVITATION_UNUSABLE = "This invitation link has already been used, was withdrawn or has expired. Ask for a new one."


@transaction.atomic
def invitation_accept(
    *, token: str, user: User | None = None, full_name: str = "", password: str = "",
    by: Actor | None = None,
) -> Membership:
    """Accept an invitation: as the signed-in ``user``, or by creating the invited account.

    Raises PortalError when the link is unusable or meant for another address, and
    ValidationError when the new account's password breaks a rule. Nothing is stored on failure.
    """
    # The row lock makes the link single-use even when it is clicked twice at once.
    invitation = (
        Invitation.objects.select_for_update().select_related("clinic").filter(token_hash=secret_hash(token)).first()
    )
    if invitation is None or not invitation.is_usable:
        raise PortalError(INVITATION_UNUSABLE)
    if user is None:
        if User.objects.filter(email__iexact=invitation.email).exists():
            raise Conflict("An account with this e-mail address exists already; sign in to accept the invitation.")
        _validate_new_password(password=password, email=invitation.email, full_name=full_name)
        user = User.objects.create_user(invitation.email, password, full_name=full_name.strip())
    elif user.email.lower() != invitation.email.lower():
        raise NotAllowed(f"This invitation is for {invitation.email}; you are signed in as {user.email}.")
    try:
        with transaction.atomic():
            membership = Membership.objects.create(clinic=invitation.clinic, user=user, role=invitation.role)
    except IntegrityError as exc:
        raise Conflict("You are already a member of this clinic.") from exc
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(clinic=invitation.clinic, action="invitation.accepted", by=by, actor=user,
                 object_type="invitation", object_id=str(invitation.uuid), details={"role": invitation.role})
    return membership


# --- sign-in, sessions ------------------------------------------------------------------------------


def _user_clinics(user: User | None) -> list[Clinic | None]:
    """The audit chains an account event belongs to: each of the user's clinics, or the global one."""
    if user is None:
        return [None]
    clinics: list[Clinic | None] = [m.clinic for m in Membership.objects.filter(user=user).select_related("clinic")]
    return clinics or [None]


def auth_event_record(
    *, action: str, user: User | None, by: Actor | None, result: str = "success",
    details: dict | None = None,
) -> None:
    """Write a sign-in related event into every clinic the user belongs to (global chain otherwise)."""
    for clinic in _user_clinics(user):
        audit_record(clinic=clinic, action=action, by=by, actor=user,
                     actor_label=user.email if user else "anonymous", object_type="user",
                     object_id=str(user.uuid) if user else "", result=result, details=details)


def session_idle_seconds(*, user: User) -> int:
    """The idle limit for the user's sessions: the site's, or a shorter one set by one of their clinics."""
    idle = settings.SESSION_IDLE_TIMEOUT.total_seconds()
    minutes = (
        Clinic.objects.filter(memberships__user=user, session_idle_minutes__isnull=False)
        .values_list("session_idle_minutes", flat=True)
    )
    for value in minutes:
        if value is not None:
            idle = min(idle, value * 60)
    return int(idle)


def session_start(*, request: HttpRequest, user: User) -> None:
    """Set up a new signed-in session: idle limit, timers, and the record for "sign out everywhere"."""
    session = request.session
    now = time.time()
    session["idle_seconds"] = session_idle_seconds(user=user)
    session["started_at"] = now
    session["last_seen_at"] = now
    if session.session_key is None:
        session.save()
    # Sessions that ran out without a sign-out (browser closed, absolute limit) leave rows behind.
    cutoff = timezone.now() - settings.SESSION_ABSOLUTE_TIMEOUT
    UserSession.objects.filter(user=user, created_at__lt=cutoff).delete()
    UserSession.objects.update_or_create(
        session_key=session.session_key,
        defaults={"user": user, "ip_address": client_address(request),
                  "user_agent": request.META.get("HTTP_USER_AGENT", "")[:512]},
    )


def session_forget(*, session_key: str | None) -> None:
    if session_key:
        UserSession.objects.filter(session_key=session_key).delete()


def _session_store() -> type[SessionBase]:
    """The configured session backend's store class (sessions may live outside the database)."""
    return import_module(settings.SESSION_ENGINE).SessionStore


def user_sessions_end_all(*, user: User, by: Actor | None = None) -> int:
    """End every session of the user, on every device, and say how many were still open."""
    store = _session_store()
    ended = 0
    for key in list(UserSession.objects.filter(user=user).values_list("session_key", flat=True)):
        session = store(session_key=key)
        if session.exists(key):
            ended += 1
        session.delete(key)
    UserSession.objects.filter(user=user).delete()
    auth_event_record(action="auth.logout_everywhere", user=user, by=by, details={"sessions": ended})
    return ended


def password_changed_record(*, user: User, request: HttpRequest | None, how: str) -> None:
    """Write down a password change or reset, and drop the record of sessions it invalidated."""
    # Django invalidates other sessions by the changed password hash; keep only the current one.
    current = request.session.session_key if request is not None and hasattr(request, "session") else None
    UserSession.objects.filter(user=user).exclude(session_key=current or "").delete()
    if how == "reset":
        # Whoever can read the account's mailbox is its owner: a reset lifts a lockout.
        axes_reset(username=user.email.lower())
    auth_event_record(action=f"auth.password_{how}", user=user,
                      by=Actor.from_request(request) if request is not None else None)


# --- two-factor authentication --------------------------------------------------------------------


def two_factor_device_get_or_start(*, user: User) -> TOTPDevice:
    """Return the user's unconfirmed TOTP device, creating one (a new secret) if there is none."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("-id").first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)
    return device


def two_factor_secret_base32(*, device: TOTPDevice) -> str:
    """The secret as authenticator apps expect it when typed in by hand."""
    return base64.b32encode(device.bin_key).decode().rstrip("=")


RECOVERY_CODE_COUNT = 10
RECOVERY_DEVICE_NAME = "Recovery codes"
WRONG_CODE_MESSAGE = ("That code is not right. Enter the current code from your authenticator app, "
                      "or one of your recovery codes.")
REPLAYED_CODE_MESSAGE = ("This code was just used: wait for the next one your authenticator app shows, "
                         "then enter that.")


@dataclass(frozen=True)
class TwoFactorEnabled:
    device: TOTPDevice
    recovery_codes: list[str]


@dataclass(frozen=True)
class CodeCheck:
    """The outcome of a second-factor code: the device that accepted it, or a message saying why not."""

    device: TOTPDevice | StaticDevice | None
    message: str = ""

    @property
    def is_recovery_code(self) -> bool:
        return isinstance(self.device, StaticDevice)


@transaction.atomic
def two_factor_confirm(*, user: User, code: str, by: Actor | None = None) -> TwoFactorEnabled:
    """Confirm the pending device with a code from the app; replaces any earlier confirmed device.

    Also issues a fresh set of recovery codes (returned here, to be shown once).
    Raises PortalError when the code is wrong.
    """
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).order_by("-id").first()
    if device is None:
        raise PortalError("Start the set-up again: no authenticator is waiting to be confirmed.")
    if not device.verify_token(code.strip()):
        raise PortalError("That code is not right. Check the time on your phone and enter the current code.")
    TOTPDevice.objects.filter(user=user, confirmed=True).delete()
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    auth_event_record(action="auth.two_factor_enabled", user=user, by=by)
    return TwoFactorEnabled(device=device, recovery_codes=recovery_codes_generate(user=user, by=by))


@transaction.atomic
def recovery_codes_generate(*, user: User, by: Actor | None = None) -> list[str]:
    """Replace the user's recovery codes with new single-use ones and return them (shown once).

    They are django-otp static tokens: each one signs in once in place of an authenticator code.
    """
    device, _ = StaticDevice.objects.get_or_create(user=user, name=RECOVERY_DEVICE_NAME, defaults={"confirmed": True})
    device.token_set.all().delete()
    codes = [StaticToken.random_token() for _ in range(RECOVERY_CODE_COUNT)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=code) for code in codes)
    auth_event_record(action="auth.recovery_codes_generated", user=user, by=by,
                      details={"count": RECOVERY_CODE_COUNT})
    return [f"{code[:4]}-{code[4:]}" for code in codes]


def _totp(device: TOTPDevice) -> TOTP:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time()
    return totp


def _totp_replayed(device: TOTPDevice, code: str) -> bool:
    """Whether the code is the app's current one but its time step was already used (django-otp refuses it)."""
    if device.last_t < 0:
        return False
    token = int(code)
    return _totp(device).verify(token, device.tolerance) and not _totp(device).verify(
        token, device.tolerance, device.last_t + 1
    )


def _throttled_message(info: dict | None) -> str:
    locked_until = (info or {}).get("locked_until")
    seconds = max(1, int((locked_until - timezone.now()).total_seconds()) + 1) if locked_until else 1
    return f"Too many wrong codes: wait {seconds} second{'s' if seconds != 1 else ''}, then enter the current code."


# Reset mails one address may be sent per hour: enough for a lost mail or two, too few to flood an inbox.
PASSWORD_RESET_MAILS_PER_HOUR = 3


def password_reset_mail_allowed(*, email: str) -> bool:
    """Count a reset mail to this address; False once it had PASSWORD_RESET_MAILS_PER_HOUR this hour.

    The form answers the same either way, so a refused mail tells an asker nothing about the account.
    """
    key = "password-reset-mails:" + hashlib.sha256(email.strip().casefold().encode()).hexdigest()
    cache.add(key, 0, 3600)
    try:
        return cache.incr(key) <= PASSWORD_RESET_MAILS_PER_HOUR
    except ValueError:  # the count expired between add and incr: this is the first of a new hour
        cache.add(key, 1, 3600)
        return True


def password_reset_request_record(*, user: User) -> User:
    """Stamp a reset request on the user, before its mail's link is signed: the links mailed before it die.

    Whoever reads an older mail later (a leaked mailbox, a forwarded message) then cannot set the password.
    """
    user.password_reset_requested_at = timezone.now()
    user.save(update_fields=["password_reset_requested_at"])
    return user


def two_factor_check(*, user: User, code: str, by: Actor | None = None) -> CodeCheck:
    """Check a second-factor code: the authenticator's current code, or one of the user's recovery codes.

    A code that was right but already used (the one that just turned two-factor on, or just signed in)
    is a replay: it is refused with its own message and, unlike a wrong code, not counted toward
    django-otp's throttle. A recovery code is used up by signing in with it (audited, no code kept).
    """
    code = code.strip().replace(" ", "").replace("-", "").lower()
    if not code:
        return CodeCheck(None, WRONG_CODE_MESSAGE)
    if code.isdigit():
        for device in TOTPDevice.objects.filter(user=user, confirmed=True):
            if len(code) != device.digits:
                continue
            allowed, info = device.verify_is_allowed()
            if not allowed:
                return CodeCheck(None, _throttled_message(info))
            if _totp_replayed(device, code):
                return CodeCheck(None, REPLAYED_CODE_MESSAGE)
            if device.verify_token(code):
                return CodeCheck(device)
        return CodeCheck(None, WRONG_CODE_MESSAGE)
    recovery = StaticDevice.objects.filter(user=user, name=RECOVERY_DEVICE_NAME, confirmed=True).first()
    if recovery is None:
        return CodeCheck(None, WRONG_CODE_MESSAGE)
    allowed, info = recovery.verify_is_allowed()
    if not allowed:
        return CodeCheck(None, _throttled_message(info))
    # Deleting the code is the check: django-otp's verify_token finds it, then deletes it, so two requests
    # with the same code at once could both pass. Only the one whose DELETE removed the row may use it.
    used, _ = StaticToken.objects.filter(device=recovery, token=code).delete()
    if not used:
        recovery.throttle_increment()
        return CodeCheck(None, WRONG_CODE_MESSAGE)
    recovery.throttle_reset()
    auth_event_record(action="auth.recovery_code_used", user=user, by=by,
                      details={"remaining": recovery.token_set.count()})
    return CodeCheck(recovery)


def two_factor_verify(*, user: User, code: str, by: Actor | None = None) -> TOTPDevice | StaticDevice | None:
    """Return the device that accepts the code (authenticator or recovery codes), or None."""
    return two_factor_check(user=user, code=code, by=by).device


def two_factor_disable(*, user: User, code: str, by: Actor | None = None) -> None:
    """Remove the user's authenticator, after a valid code.

    Raises NotAllowed when one of the user's clinics requires two-factor sign-in.
    """
    required = Clinic.objects.filter(memberships__user=user, require_two_factor=True).first()
    if required is not None:
        raise NotAllowed(f"{required.name} requires two-factor sign-in, so it cannot be turned off.")
    check = two_factor_check(user=user, code=code, by=by)
    if check.device is None:
        raise PortalError(f"{check.message} Two-factor sign-in stays on.")
    TOTPDevice.objects.filter(user=user).delete()
    StaticDevice.objects.filter(user=user).delete()
    auth_event_record(action="auth.two_factor_disabled", user=user, by=by)

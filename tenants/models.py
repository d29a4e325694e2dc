"""Clinics (tenants), their members and roles, invitations, API tokens and the audit trail."""

from __future__ import annotations

import uuid
from typing import Self

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from tenants.roles import Role, role_can


class ClinicQuerySet(models.QuerySet):
    """The one tenant-scoping mechanism: every tenant-owned query starts with ``for_clinic``."""

    def for_clinic(self, clinic: Clinic | int) -> Self:
        return self.filter(clinic=clinic)


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: object) -> User:
        if not email:
            raise ValueError("An e-mail address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who signs in with an e-mail address; belongs to clinics through memberships."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    email = models.EmailField(unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    # Part of every reset link's signature: stamping a new request kills the links mailed before it.
    password_reset_requested_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self) -> str:
        return self.email


class Clinic(models.Model):
    """A tenant: one clinic, its members, its studies and its keys."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=50, unique=True)
    ae_title = models.CharField(max_length=16, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Security policy, set by owners and admins.
    require_two_factor = models.BooleanField(default=False)
    session_idle_minutes = models.PositiveIntegerField(
        null=True, blank=True, help_text="Shorter idle timeout for this clinic's members."
    )
    # Storage accounting; billing sets the quota from the plan.
    quota_bytes = models.BigIntegerField(default=0)
    used_bytes = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["clinic", "user"], name="membership_unique_user")]

    def can(self, action: str) -> bool:
        return role_can(self.role, action)

    @property
    def label(self) -> str:
        return self.user.email


class Invitation(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=20, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ClinicQuerySet.as_manager()

    @property
    def is_usable(self) -> bool:
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > timezone.now()


class ApiToken(models.Model):
    """A clinic-scoped credential for integrations; the secret is shown once and stored hashed."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=20, choices=Role.choices)
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=12)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            # The audit trail names a token by its name (``label``): one name, one token, revoked ones included.
            models.UniqueConstraint(Lower("name"), "clinic", name="api_token_unique_name"),
        ]

    def can(self, action: str) -> bool:
        return role_can(self.role, action)

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @property
    def label(self) -> str:
        return f"token:{self.name}"


class AuditEvent(models.Model):
    """One append-only, hash-chained entry of a clinic's audit trail.

    ``clinic`` is empty for events that belong to no clinic (a failed login for an unknown address);
    those form a chain of their own. ``hash`` covers the previous entry's hash, so an edited or
    deleted entry breaks the chain and ``manage.py verify_audit_log`` finds it.
    """

    clinic = models.ForeignKey(Clinic, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    sequence = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=255, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=128, blank=True)
    result = models.CharField(max_length=16, default="success")
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["clinic", "sequence"], name="audit_unique_sequence"),
            models.UniqueConstraint(
                fields=["sequence"], condition=models.Q(clinic=None), name="audit_unique_global_sequence"
            ),
        ]
        indexes = [models.Index(fields=["clinic", "-created_at"])]


class AuditChain(models.Model):
    """The head of one audit chain (a clinic's, or the global one), locked while an entry is appended."""

    key = models.CharField(max_length=64, unique=True)
    last_sequence = models.PositiveBigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="0" * 64)


class UserSession(models.Model):
    """A browser session a user signed in with, so that "sign out everywhere" can end them all.

    Rows are written at sign-in and removed at sign-out; a row whose session already expired is
    harmless (ending it again is a no-op) and is cleared the next time the user signs out everywhere.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="sessions")
    session_key = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)

    def __str__(self) -> str:
        return f"session of {self.user_id} since {self.created_at:%Y-%m-%d %H:%M}"

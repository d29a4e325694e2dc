"""Share links for referring doctors and patients, upload links for outside senders, and their access log."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from studies.models import Study
from tenants.models import Clinic, ClinicQuerySet, User


class ShareKind(models.TextChoices):
    LINK = "link", "Share link"
    PATIENT = "patient", "Patient access code"


class Share(models.Model):
    """Read-only access to some studies through a secret link, without an account.

    Only hashes of the token (and of a patient access code) are stored; the PIN is hashed like a password.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=8, choices=ShareKind.choices, default=ShareKind.LINK)
    token_hash = models.CharField(max_length=64, unique=True)
    studies = models.ManyToManyField(Study, related_name="shares")
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    pin_hash = models.CharField(max_length=255, blank=True)
    allow_download = models.BooleanField(default=False)
    note = models.CharField(max_length=500, blank=True)
    recipient_email = models.EmailField(blank=True)
    max_opens = models.PositiveIntegerField(null=True, blank=True)
    open_count = models.PositiveIntegerField(default=0)
    revoked_at = models.DateTimeField(null=True, blank=True)
    failed_pin_count = models.PositiveIntegerField(default=0)
    locked_until = models.DateTimeField(null=True, blank=True)

    objects = ClinicQuerySet.as_manager()

    def __str__(self) -> str:
        return f"Share {self.uuid}"

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()

    @property
    def is_used_up(self) -> bool:
        """No open is left: the link serves only the sessions that already used one."""
        return self.max_opens is not None and self.open_count >= self.max_opens

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and not self.is_expired and not self.is_used_up

    @property
    def is_locked(self) -> bool:
        return self.locked_until is not None and self.locked_until > timezone.now()

    @property
    def has_pin(self) -> bool:
        return bool(self.pin_hash)


class ShareAccess(models.Model):
    """One access through a share link: visible to the clinic."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    share = models.ForeignKey(Share, on_delete=models.CASCADE, related_name="accesses")
    at = models.DateTimeField(default=timezone.now)
    action = models.CharField(max_length=32)
    study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["share", "-at"])]


class UploadLink(models.Model):
    """Lets an outside sender upload studies into the clinic, seeing nothing already stored."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    pin_hash = models.CharField(max_length=255, blank=True)
    note = models.CharField(max_length=500, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    failed_pin_count = models.PositiveIntegerField(default=0)
    locked_until = models.DateTimeField(null=True, blank=True)
    received_count = models.PositiveIntegerField(default=0)
    # When the clinic was last told that files arrived; one e-mail per upload, across all web processes.
    last_notified_at = models.DateTimeField(null=True, blank=True)
    anonymize_project = models.ForeignKey(
        "studies.AnonymizationProject", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Anonymize everything arriving through this link under this project.",
    )

    objects = ClinicQuerySet.as_manager()

    def __str__(self) -> str:
        return f"Upload link {self.uuid}"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()

    @property
    def is_locked(self) -> bool:
        return self.locked_until is not None and self.locked_until > timezone.now()

    @property
    def has_pin(self) -> bool:
        return bool(self.pin_hash)

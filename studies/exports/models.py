from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from tenants.models import Clinic, ClinicQuerySet, User


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Being prepared"
    DONE = "done", "Ready to download"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"


class ClinicExport(models.Model):
    """An owner's request for every study of the clinic as DICOM files with a DICOMDIR.

    ``parts`` lists the ZIP archives made, each an encrypted object of the clinic's primary store:
    ``[{"key", "name", "size_bytes", "studies", "instances"}]``.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    requested_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    parts = models.JSONField(default=list, blank=True)
    studies_total = models.PositiveIntegerField(default=0)
    studies_done = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)
    # The portal's address as the requester saw it, for the link in the "ready" e-mail sent by the worker.
    base_url = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # When the worker building it last reported (claim, then as it decrypts): a RUNNING export silent for
    # CLINIC_EXPORT_STALE_SECONDS lost its worker, and the sweep has it built again.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Counts the builds that claimed it: a build writes only while it is the latest, so a worker taken for
    # dead that wakes up again cannot overwrite the new build's parts or status.
    attempt = models.PositiveIntegerField(default=0)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["clinic", "-created_at"], name="clinic_export_recent")]

"""Anonymization projects, their (encrypted) re-identification mappings, jobs and their results."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from studies.models import Study
from tenants.models import Clinic, ClinicQuerySet, User


class AnonymizationProject(models.Model):
    """A namespace for pseudonyms and replacement UIDs: the same patient or UID always maps the same way
    inside one project, so later batches link up with earlier ones."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    pseudonym_prefix = models.CharField(max_length=20, default="ANON")
    options = models.JSONField(default=list, blank=True, help_text="Default profile options (Option values).")
    # Blanking rectangles per device: [{"manufacturer": "...", "model": "...", "rectangles": [[x, y, w, h], ...]}]
    device_rectangles = models.JSONField(default=list, blank=True)
    # The project secret (derives replacement UIDs and date shifts), sealed with the clinic key.
    sealed_secret = models.BinaryField()
    next_number = models.PositiveIntegerField(default=1)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["clinic", "name"], name="anon_project_unique_name")]

    def __str__(self) -> str:
        return self.name


class PatientPseudonym(models.Model):
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey(AnonymizationProject, on_delete=models.CASCADE, related_name="pseudonyms")
    # HMAC of the patient's identity under the project secret: finds the row without storing the identity.
    lookup_hash = models.CharField(max_length=64)
    sealed_identity = models.BinaryField()
    pseudonym = models.CharField(max_length=64)
    date_shift_days = models.IntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "lookup_hash"], name="pseudonym_unique_patient"),
            models.UniqueConstraint(fields=["project", "pseudonym"], name="pseudonym_unique_name"),
        ]


class UidMapping(models.Model):
    """A replacement UID and its original, sealed: only owners and admins may look it up."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey(AnonymizationProject, on_delete=models.CASCADE, related_name="uid_mappings")
    new_uid = models.CharField(max_length=64)
    sealed_original = models.BinaryField()

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "new_uid"], name="uid_mapping_unique")]


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class AnonymizationJob(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey(AnonymizationProject, on_delete=models.PROTECT, related_name="jobs")
    options = models.JSONField(default=list, blank=True)
    source_studies = models.ManyToManyField(Study, blank=True, related_name="+")
    # Series to restrict to (uuids); empty means whole studies.
    source_series = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    needs_review = models.PositiveIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True)
    requested_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When a batch of the running job last finished (or it started): the sweep re-queues what is left of a
    # job that has not moved for ANONYMIZATION_JOB_STALE_SECONDS (its worker was killed, a message lost).
    progress_at = models.DateTimeField(null=True, blank=True)

    objects = ClinicQuerySet.as_manager()

    @property
    def progress(self) -> float:
        return 1.0 if self.total == 0 and self.status == JobStatus.DONE else (
            (self.done + self.failed) / self.total if self.total else 0.0
        )


class AnonymizationJobItem(models.Model):
    """One instance of a job, processed: makes a redelivered task a no-op and the counts exact."""

    class Outcome(models.TextChoices):
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    job = models.ForeignKey(AnonymizationJob, on_delete=models.CASCADE, related_name="items")
    instance_id = models.BigIntegerField()
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    needs_review = models.BooleanField(default=False)
    reason = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "instance_id"], name="anon_job_item_unique")]


class AnonymizedStudy(models.Model):
    """Marks a study as the anonymized copy of another, made under a project."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="anonymization")
    source_study = models.ForeignKey(Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    project = models.ForeignKey(AnonymizationProject, on_delete=models.PROTECT, related_name="+")
    job = models.ForeignKey(AnonymizationJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="results")
    needs_review = models.BooleanField(default=False, help_text="May show burned-in text nobody checked.")
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()


class IngestAnonymization(models.Model):
    """Anonymize on arrival, so that the original is never written: everything arriving in the clinic,
    or everything arriving through one API token or one DICOM node (upload links carry their own)."""

    class AppliesTo(models.TextChoices):
        CLINIC = "clinic", "Everything arriving in the clinic"
        API_TOKEN = "api_token", "One API token"
        DICOM_NODE = "dicom_node", "One DICOM node"

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    project = models.ForeignKey(AnonymizationProject, on_delete=models.CASCADE, related_name="ingest_rules")
    applies_to = models.CharField(max_length=16, choices=AppliesTo.choices)
    api_token = models.ForeignKey("tenants.ApiToken", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    dicom_node = models.ForeignKey("studies.DicomNode", null=True, blank=True, on_delete=models.CASCADE,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["clinic"], condition=models.Q(applies_to="clinic"),
                                    name="ingest_anon_one_per_clinic"),
            models.UniqueConstraint(fields=["api_token"], name="ingest_anon_one_per_token"),
            models.UniqueConstraint(fields=["dicom_node"], name="ingest_anon_one_per_node"),
        ]

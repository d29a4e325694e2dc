"""Outbound DICOM jobs: sends, migrations from another archive, routing rules and their deliveries.

Every row names its clinic. Jobs keep their progress in the database (never only in a worker's memory),
so a job resumes where it was after a worker or broker restart: a periodic sweep re-queues any job whose
worker stopped reporting (``heartbeat_at``).
"""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from studies.models import DicomNode, Instance, Series, Study
from tenants.models import Clinic, ClinicQuerySet, User

# Associations a migration may keep open to its source at once (each retrieves studies of its own).
MIGRATION_ASSOCIATIONS_DEFAULT = 4
MIGRATION_ASSOCIATIONS_MAX = 8


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Finished with failures"
    STOPPED = "stopped", "Stopped"


class SendJob(models.Model):
    """Send one study (or one of its series) to a registered node by C-STORE."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    node = models.ForeignKey(DicomNode, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="+")
    series = models.ForeignKey(Series, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    instances_total = models.PositiveIntegerField(default=0)
    instances_done = models.PositiveIntegerField(default=0)
    instances_failed = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    # A worker holds the job while heartbeat_at is recent (a lease); queued_at says when a task was last
    # queued for it, so the sweep re-queues only what is neither running nor waiting in the queue.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = ClinicQuerySet.as_manager()

    @property
    def progress(self) -> float:
        if not self.instances_total:
            return 1.0 if self.status in (JobStatus.DONE, JobStatus.FAILED) else 0.0
        return round((self.instances_done + self.instances_failed) / self.instances_total, 4)


class SendResult(models.Model):
    """What the node answered for one instance of a send (the last attempt)."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(SendJob, on_delete=models.CASCADE, related_name="results")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="+")
    is_success = models.BooleanField(default=False)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=200, blank=True)
    sent_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "instance"], name="send_result_unique_instance")]


class MigrationJob(models.Model):
    """Pull an old archive (or part of it) into the clinic: list, retrieve, verify.

    The source is a registered DICOM node (C-FIND, then C-GET or C-MOVE) or a DICOMweb service (QIDO-RS,
    then WADO-RS): exactly one of ``node`` and ``dicomweb_url`` is set. A DICOMweb source's credentials are
    sealed with the clinic's key (studies.archive.sealing) and never shown.
    """

    class Method(models.TextChoices):
        MOVE = "C-MOVE", "C-MOVE (the node sends to our listener)"
        GET = "C-GET", "C-GET (we pull over our own association)"
        WADO = "WADO-RS", "WADO-RS (a DICOMweb source)"

    class Auth(models.TextChoices):
        NONE = "", "None"
        BEARER = "bearer", "Bearer token"
        BASIC = "basic", "User name and password"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    node = models.ForeignKey(DicomNode, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    dicomweb_url = models.URLField(max_length=500, blank=True)
    dicomweb_auth = models.CharField(max_length=8, choices=Auth.choices, blank=True, default=Auth.NONE)
    dicomweb_credentials = models.BinaryField(blank=True, default=b"", editable=False)
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.GET)
    study_date_from = models.CharField(max_length=8, blank=True)
    study_date_to = models.CharField(max_length=8, blank=True)
    modalities = models.JSONField(default=list, blank=True)
    patient_ids = models.JSONField(default=list, blank=True)
    # Throttles: instances per second (0 = as fast as the node sends) and the hours the job may run in
    # (e.g. 20 -> 6 for nights; equal means any time).
    max_instances_per_second = models.PositiveIntegerField(default=0)
    # Studies retrieved at once, each over an association (or WADO-RS request) of its own; the instances
    # per second above hold for all of them together.
    associations = models.PositiveSmallIntegerField(default=MIGRATION_ASSOCIATIONS_DEFAULT)
    window_start_hour = models.PositiveSmallIntegerField(default=0)
    window_end_hour = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    studies_total = models.PositiveIntegerField(default=0)
    instances_total = models.PositiveIntegerField(default=0)
    instances_done = models.PositiveIntegerField(default=0)
    instances_failed = models.PositiveIntegerField(default=0)
    is_listed = models.BooleanField(default=False, help_text="The node's matching studies have all been listed.")
    error = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    # A worker holds the job while heartbeat_at is recent (a lease); queued_at says when a task was last
    # queued for it, so the sweep re-queues only what is neither running nor waiting in the queue.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(node__isnull=False) & models.Q(dicomweb_url=""))
                | (models.Q(node__isnull=True) & ~models.Q(dicomweb_url="")),
                name="migration_job_one_source",
            )
        ]

    @property
    def is_dicomweb(self) -> bool:
        return not self.node_id and bool(self.dicomweb_url)

    @property
    def source_label(self) -> str:
        """What the pages and the audit call the source (never its credentials)."""
        return self.dicomweb_url if self.is_dicomweb else (self.node.ae_title if self.node else "")

    @property
    def progress(self) -> float:
        if not self.instances_total:
            return 1.0 if self.status in (JobStatus.DONE, JobStatus.FAILED) else 0.0
        return round(min(1.0, (self.instances_done + self.instances_failed) / self.instances_total), 4)


class MigrationStudy(models.Model):
    """One study the source listed for a migration, with how many instances it said it holds."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        VERIFIED = "verified", "All instances present"
        INCOMPLETE = "incomplete", "Instances missing"

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(MigrationJob, on_delete=models.CASCADE, related_name="studies")
    study_instance_uid = models.CharField(max_length=64)
    instances_listed = models.PositiveIntegerField(default=0)
    instances_present = models.PositiveIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "study_instance_uid"], name="migration_study_unique_uid")
        ]
        indexes = [models.Index(fields=["job", "state"], name="migration_study_state")]


class MigrationInstance(models.Model):
    """One SOP instance the source listed; ``is_present`` once our index holds it."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    study = models.ForeignKey(MigrationStudy, on_delete=models.CASCADE, related_name="instances")
    series_instance_uid = models.CharField(max_length=64)
    sop_instance_uid = models.CharField(max_length=64)
    is_present = models.BooleanField(default=False)
    # Why ingest refused the file the source sent for it, when sending it again cannot change that (another
    # instance than announced, not DICOM, another patient's): it is then not asked for again, and is reported.
    refusal = models.CharField(max_length=200, blank=True, default="")

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "sop_instance_uid"], name="migration_instance_unique_uid")
        ]


class RoutingRule(models.Model):
    """Forward incoming instances that match to one or more nodes. Empty criteria match everything."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=100)
    calling_ae_title = models.CharField(max_length=16, blank=True, help_text="Only images sent by this AE title.")
    modality = models.CharField(max_length=16, blank=True, help_text="Only images of this modality.")
    source = models.CharField(max_length=16, blank=True, help_text="Only images that came this way in.")
    destinations = models.ManyToManyField(DicomNode, related_name="+")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        ordering = ["name"]


class RouteDelivery(models.Model):
    """One instance owed to one node by a routing rule; retried with back-off until delivered."""

    class State(models.TextChoices):
        PENDING = "pending", "Waiting"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Refused by the node"

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    rule = models.ForeignKey(RoutingRule, on_delete=models.CASCADE, related_name="deliveries")
    node = models.ForeignKey(DicomNode, on_delete=models.CASCADE, related_name="+")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rule", "node", "instance"], name="route_delivery_unique")
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="route_delivery_due")]

"""The clinic's DICOM index (patient, study, series, instance) and its encryption keys.

Pixel data and whole files never live here: each instance is one encrypted object in the primary
store (``Instance.object_key``), copied to the replica. The index keeps what people search and sort
by, and a DICOM JSON copy of each instance's header so that WADO-RS metadata needs no object reads.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Upper
from django.utils import timezone

from tenants.models import Clinic, ClinicQuerySet, User


class ClinicKey(models.Model):
    """A clinic's data key, wrapped by a master key; the plain key never touches the database."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="keys")
    key_id = models.CharField(max_length=64, unique=True)
    master_key_id = models.CharField(max_length=64)
    wrapped_key = models.BinaryField()
    created_at = models.DateTimeField(default=timezone.now)
    is_primary = models.BooleanField(default=True)

    objects = ClinicQuerySet.as_manager()


class Patient(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="+")
    patient_id = models.CharField(max_length=64, blank=True)
    issuer_of_patient_id = models.CharField(max_length=64, blank=True)
    patient_name = models.CharField(max_length=324, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    # Whether the Patient ID named the patient when the row was made (studies.patients): False for an empty
    # or placeholder ID ("UNKNOWN"), whose patients are told apart by name and birth date. Kept on the row
    # because the placeholder list is a setting: changing it must not change what the constraint covers.
    identified_by_id = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            # One row per real Patient ID; the others are told apart by name and birth date (studies.ingest.index).
            models.UniqueConstraint(
                fields=["clinic", "patient_id", "issuer_of_patient_id"],
                condition=models.Q(identified_by_id=True),
                name="patient_unique_id",
            )
        ]
        indexes = [
            models.Index(Upper("patient_name"), "clinic", name="patient_name_upper"),
            # Look-ups by ID: SQLite uses no partial index for them (it cannot prove "ID <> ''" from "ID = ?").
            models.Index(fields=["clinic", "patient_id", "issuer_of_patient_id"], name="patient_id_lookup"),
        ]


class Study(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="+")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    # The patient's name, copied so that a name search (and the sort by name) runs on this table and its
    # indexes alone; the index writer sets it with the patient (issue 19).
    patient_name = models.CharField(max_length=324, blank=True)
    study_instance_uid = models.CharField(max_length=64)
    study_id = models.CharField(max_length=16, blank=True)
    study_date = models.DateField(null=True, blank=True)
    study_time = models.TimeField(null=True, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    study_description = models.CharField(max_length=128, blank=True)
    referring_physician_name = models.CharField(max_length=324, blank=True)
    modalities_in_study = models.CharField(max_length=128, blank=True, help_text="Backslash-separated.")
    body_part_examined = models.CharField(max_length=128, blank=True, help_text="Backslash-separated.")
    number_of_series = models.PositiveIntegerField(default=0)
    number_of_instances = models.PositiveIntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True, help_text="In the trash since.")
    deleted_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    purge_started_at = models.DateTimeField(
        null=True, blank=True, help_text="The purge began erasing its objects: it can no longer be restored."
    )

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["clinic", "study_instance_uid"], name="study_unique_uid")
        ]
        indexes = [
            models.Index(fields=["clinic", "-study_date"], name="study_clinic_date"),
            models.Index(fields=["clinic", "accession_number"], name="study_clinic_accession"),
            models.Index(fields=["clinic", "-created_at"], name="study_clinic_created"),
        ]


class Series(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64)
    modality = models.CharField(max_length=16, blank=True)
    series_number = models.IntegerField(null=True, blank=True)
    series_description = models.CharField(max_length=128, blank=True)
    body_part_examined = models.CharField(max_length=64, blank=True)
    series_date = models.DateField(null=True, blank=True)
    series_time = models.TimeField(null=True, blank=True)
    number_of_instances = models.PositiveIntegerField(default=0)
    thumbnail_key = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "series"
        constraints = [
            models.UniqueConstraint(fields=["clinic", "series_instance_uid"], name="series_unique_uid")
        ]
        # QIDO series of one study and the study page list them in this order (study, number).
        indexes = [models.Index(fields=["study", "series_number", "id"], name="series_of_study")]


class Instance(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="+")
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64)
    sop_class_uid = models.CharField(max_length=64)
    instance_number = models.IntegerField(null=True, blank=True)
    transfer_syntax_uid = models.CharField(max_length=64)
    number_of_frames = models.PositiveIntegerField(default=1)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    size_bytes = models.BigIntegerField(help_text="Plaintext size of the DICOM file.")
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the plaintext DICOM file.")
    object_key = models.CharField(max_length=255, unique=True)
    key_id = models.CharField(max_length=64)
    metadata = models.JSONField(default=dict, help_text="DICOM JSON of the header, bulk data left out.")
    stored_at = models.DateTimeField(default=timezone.now, db_index=True)
    replicated_at = models.DateTimeField(null=True, blank=True)
    # When the sweep last queued a replication message for it: the sweep leaves it alone while that is
    # recent. None: only ingest's own message, queued with the index commit (taken as lost after a minute).
    replication_queued_at = models.DateTimeField(null=True, blank=True)
    replica_verified_at = models.DateTimeField(null=True, blank=True)
    replica_verify_failed_at = models.DateTimeField(null=True, blank=True)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["clinic", "sop_instance_uid"], name="instance_unique_uid")
        ]
        indexes = [
            models.Index(
                fields=["stored_at"], condition=models.Q(replicated_at=None), name="instance_pending_replica"
            ),
        ]


class DicomNode(models.Model):
    """A remote DICOM application entity registered by a clinic.

    ``allow_inbound`` lets it open associations to the clinic's called AE title from ``allowed_address``
    (an IP address or network) or, without one, from ``host``'s address; from anywhere only with
    ``allow_any_address``. ``is_move_destination`` makes it a C-MOVE target at ``host``:``port``.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    ae_title = models.CharField(max_length=16)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField()
    description = models.CharField(max_length=200, blank=True)
    allow_inbound = models.BooleanField(default=True, help_text="May open associations to this clinic.")
    is_move_destination = models.BooleanField(default=True, help_text="May be named as a C-MOVE destination.")
    allowed_address = models.CharField(
        max_length=64, blank=True, help_text="Accept calls only from this IP address or network (CIDR)."
    )
    calling_ae_title = models.CharField(
        max_length=16, blank=True, help_text="Our calling AE title towards this node (empty: the clinic's own)."
    )
    # Without an allowed_address, calls are accepted from ``host``'s own address only; any address
    # only when an owner or admin accepted that risk (the AE title alone is guessable).
    allow_any_address = models.BooleanField(
        default=False, help_text="Accept calls from any address: the AE title alone protects the clinic."
    )
    # SHA-256 of the node's TLS client certificate (DER), hex: when set, the node may call in only over
    # DICOM TLS presenting exactly that certificate (which then identifies it from any address).
    tls_certificate_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["clinic", "ae_title"], name="dicom_node_unique_ae")]
        ordering = ["ae_title"]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class VerificationRun(models.Model):
    """One pass of backup verification (scheduled batch or ``manage.py verify_backups``).

    ``clinic`` is empty for a run across every clinic. Per-instance results live on ``Instance``
    (``replica_verified_at`` / ``replica_verify_failed_at``); this row is the summary people read.
    """

    clinic = models.ForeignKey(Clinic, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    checked = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    source = models.CharField(max_length=16, default="schedule", help_text="schedule or command.")

    objects = ClinicQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["clinic", "-started_at"], name="verification_run_recent")]

    def __str__(self) -> str:
        return f"verification {self.started_at:%Y-%m-%d %H:%M}: {self.checked} checked, {self.failed} failed"


class BackupAlert(models.Model):
    """When a kind of backup alert was last e-mailed for a clinic (empty clinic: operator-wide); rate limit."""

    clinic = models.ForeignKey(Clinic, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=32)
    last_sent_at = models.DateTimeField()
    last_message = models.CharField(max_length=500, blank=True)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["clinic", "kind"], name="backup_alert_unique_kind"),
            models.UniqueConstraint(
                fields=["kind"], condition=models.Q(clinic=None), name="backup_alert_unique_global_kind"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} alert, last sent {self.last_sent_at:%Y-%m-%d %H:%M}"


class UploadBatch(models.Model):
    """One ZIP archive uploaded in the browser, unpacked and ingested by ``studies.tasks.upload_zip_extract``.

    The archive waits encrypted in the primary store (``staging_key``) until a worker has unpacked it; each
    member's result is an ``UploadItem``, which the upload page polls.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Unpacking"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    archive_name = models.CharField(max_length=255, blank=True)
    archive_size = models.BigIntegerField(default=0)
    staging_key = models.CharField(max_length=255, blank=True, help_text="The encrypted archive until unpacked.")
    anonymize_project = models.ForeignKey(
        "studies.AnonymizationProject", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Members are anonymized under this project before they are stored.",
    )
    upload_link = models.ForeignKey(
        "studies.UploadLink", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Sent by an outside sender through this link: its members never join stored studies.",
    )
    message = models.CharField(max_length=500, blank=True, help_text="Why the whole archive failed.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Touched by the worker after every member; a queued or running batch left untouched is swept.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    staging_replicated_at = models.DateTimeField(null=True, blank=True, help_text="The staged archive is on the replica.")

    objects = ClinicQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["clinic", "-created_at"], name="upload_batch_recent")]


class UploadItem(models.Model):
    """The result of one member of an uploaded archive: stored, already present, skipped or rejected."""

    class Outcome(models.TextChoices):
        STORED = "stored", "Stored"
        ALREADY_PRESENT = "already_present", "Already present"
        SKIPPED = "skipped", "Skipped"
        REJECTED = "rejected", "Rejected"

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    batch = models.ForeignKey(UploadBatch, on_delete=models.CASCADE, related_name="items")
    name = models.CharField(max_length=1024, help_text="Path of the member inside the archive.")
    size_bytes = models.BigIntegerField(default=0)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.CharField(max_length=500, blank=True)
    instance = models.ForeignKey(Instance, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "name"], name="upload_item_unique_name")]


class QuarantinedInstance(models.Model):
    """A received instance held out of the index until someone decides where it belongs.

    Its encrypted object is in the primary store (and replicated) like any instance's, and counts toward
    the quota; it is not searchable, viewable or shareable until an owner or admin files it into its
    study or discards it (``studies.quarantine``).
    """

    class Reason(models.TextChoices):
        PATIENT_MISMATCH = "patient_mismatch", "Patient differs from the study's"
        OUTSIDE_SENDER = "outside_sender", "Upload link file for a study, series or instance already stored"

    class Resolution(models.TextChoices):
        FILED = "filed", "Filed into its study"
        DISCARDED = "discarded", "Discarded"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="+")
    reason = models.CharField(max_length=32, choices=Reason.choices)
    source = models.CharField(max_length=32, blank=True, help_text="upload, upload-zip, dicomweb, dimse, upload-link.")
    received_at = models.DateTimeField(default=timezone.now)
    upload_link = models.ForeignKey(
        "studies.UploadLink", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    sop_instance_uid = models.CharField(max_length=64)
    series_instance_uid = models.CharField(max_length=64)
    study_instance_uid = models.CharField(max_length=64)
    patient_id = models.CharField(max_length=64, blank=True)
    patient_name = models.CharField(max_length=324, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    study = models.ForeignKey(
        Study, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The stored study it collided with.",
    )
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    object_key = models.CharField(max_length=255, unique=True)
    key_id = models.CharField(max_length=64)
    replicated_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["clinic", "resolved_at", "-received_at"], name="quarantine_open")]


# Anonymization models live with their capability; importing them here registers them with the app.
from studies.anonymize.models import (  # noqa: E402, F401
    AnonymizationJob,
    AnonymizationJobItem,
    AnonymizationProject,
    AnonymizedStudy,
    IngestAnonymization,
    PatientPseudonym,
    UidMapping,
)
from studies.exports.models import ClinicExport  # noqa: E402, F401
from studies.outbound.models import (  # noqa: E402, F401
    MigrationInstance,
    MigrationJob,
    MigrationStudy,
    RouteDelivery,
    RoutingRule,
    SendJob,
    SendResult,
)
from studies.sharing.models import Share, ShareAccess, UploadLink  # noqa: E402, F401


class RestoreDrill(models.Model):
    """One scheduled restore test of a clinic: sample studies and the latest database backup, restored
    into a scratch area and checked (issue 15). The backup page shows the latest one."""

    clinic = models.ForeignKey(Clinic, on_delete=models.CASCADE, related_name="+")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    passed = models.BooleanField(default=False)
    studies_checked = models.PositiveIntegerField(default=0)
    instances_checked = models.PositiveIntegerField(default=0)
    database_snapshot = models.CharField(max_length=128, blank=True, help_text="What the database part restored.")
    problems = models.JSONField(default=list, blank=True)
    source = models.CharField(max_length=16, default="schedule", help_text="schedule or command.")

    objects = ClinicQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["clinic", "-started_at"], name="restore_drill_recent")]

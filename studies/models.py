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
    created_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["clinic", "patient_id", "issuer_of_patient_id"], name="patient_unique_id"
            )
        ]
        indexes = [models.Index(Upper("patient_name"), "clinic", name="patient_name_upper")]


class Study(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    clinic = models.ForeignKey(Clinic, on_delete=models.PROTECT, related_name="+")
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
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

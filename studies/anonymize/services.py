"""Anonymization workflows: projects, pseudonyms, jobs over stored studies, anonymize-on-ingest, re-identification.

Identities and original UIDs are kept only sealed (AES-256-GCM under the clinic key), so the database
alone does not re-identify anyone; owners and admins can, through ``reidentify``, which is audited.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, BinaryIO

import pydicom
from celery import current_app
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from portal import prepared
from portal.exceptions import PortalError
from studies.anonymize.deidentify import DeidentifyContext, DeidentifyReport, PixelRectangle, deidentify, uid_derive
from studies.anonymize.models import (
    AnonymizationJob,
    AnonymizationJobItem,
    AnonymizationProject,
    AnonymizedStudy,
    IngestAnonymization,
    JobStatus,
    PatientPseudonym,
    UidMapping,
)
from studies.anonymize.profile import Option
from studies.archive import keys, objects
from studies.archive.errors import StorageUnavailable
from studies.errors import InvalidDicom
from studies.ingest import Origin, instance_ingest, instances_ingest
from studies.models import Instance, Series, Study
from studies.patients import patient_id_identifies
from tenants.audit import Actor, audit_record
from tenants.models import Clinic, User

logger = logging.getLogger(__name__)

MAX_DATE_SHIFT_DAYS = 3650

# The job's tasks (studies.anonymize.tasks, which imports this module), queued by these names. They are
# the names the tasks had in the old studies.tasks hub, so messages already queued still resolve.
JOB_START_TASK = "studies.tasks.anonymization_job_start"
JOB_INSTANCES_TASK = "studies.tasks.anonymization_instances"


# --- sealing ------------------------------------------------------------------------------------------


def _seal(*, clinic: Clinic, plaintext: bytes, purpose: str) -> bytes:
    key_id, key = keys.clinic_key_get(clinic)
    nonce = os.urandom(12)
    aad = f"{clinic.uuid}:{purpose}".encode()
    return json.dumps({"k": key_id, "n": nonce.hex(), "c": AESGCM(key).encrypt(nonce, plaintext, aad).hex()}).encode()


def _unseal(*, clinic: Clinic, sealed: bytes | memoryview, purpose: str) -> bytes:
    envelope = json.loads(bytes(sealed))
    key = keys.clinic_key_for_object(clinic=clinic, key_id=envelope["k"])
    aad = f"{clinic.uuid}:{purpose}".encode()
    return AESGCM(key).decrypt(bytes.fromhex(envelope["n"]), bytes.fromhex(envelope["c"]), aad)


def _project_secret(project: AnonymizationProject) -> bytes:
    return _unseal(clinic=project.clinic, sealed=project.sealed_secret, purpose=f"project:{project.uuid}")


# --- projects and pseudonyms ---------------------------------------------------------------------------


def options_validate(options: list[str]) -> list[str]:
    unknown = sorted(set(options) - set(Option._value2member_map_))
    if unknown:
        raise PortalError(
            f"Unknown anonymization option(s): {', '.join(unknown)}. Choose from: {', '.join(o.value for o in Option)}."
        )
    if Option.RETAIN_LONG_FULL_DATES in options and Option.RETAIN_LONG_MODIFIED_DATES in options:
        raise PortalError("Choose either full dates or modified dates for longitudinal information, not both.")
    return sorted(set(options))


@transaction.atomic
def project_create(
    *,
    clinic: Clinic,
    name: str,
    pseudonym_prefix: str = "ANON",
    options: list[str] | None = None,
    created_by: User | None = None,
    by: Actor | None = None,
) -> AnonymizationProject:
    name = name.strip()
    prefix = pseudonym_prefix.strip().upper() or "ANON"
    if not name:
        raise PortalError("The project needs a name.")
    if not prefix.replace("-", "").replace("_", "").isalnum() or len(prefix) > 20:
        raise PortalError("The pseudonym prefix may hold up to 20 letters, digits, '-' or '_'.")
    if AnonymizationProject.objects.for_clinic(clinic).filter(name=name).exists():
        raise PortalError(f"A project named '{name}' already exists.")
    project = AnonymizationProject(clinic=clinic, name=name, pseudonym_prefix=prefix,
                                   options=options_validate(options or []), created_by=created_by)
    project.sealed_secret = _seal(clinic=clinic, plaintext=secrets.token_bytes(32), purpose=f"project:{project.uuid}")
    project.save()
    audit_record(clinic=clinic, action="anonymization.project_created", by=by, actor=created_by,
                 object_type="anonymization_project", object_id=str(project.uuid))
    return project


def project_get_or_create(*, clinic: Clinic, name: str, created_by: User | None = None,
                          by: Actor | None = None) -> AnonymizationProject:
    existing = AnonymizationProject.objects.for_clinic(clinic).filter(name=name.strip()).first()
    if existing is not None:
        return existing
    prefix = "".join(ch for ch in name.upper() if ch.isalnum())[:12] or "ANON"
    try:
        return project_create(clinic=clinic, name=name, pseudonym_prefix=prefix, created_by=created_by, by=by)
    except PortalError:
        # Created meanwhile by a concurrent request.
        return AnonymizationProject.objects.for_clinic(clinic).get(name=name.strip())


def pseudonym_for(*, project: AnonymizationProject, secret: bytes, identity: dict[str, str]) -> PatientPseudonym:
    """Return the patient's pseudonym in the project, creating the next one (PREFIX-0001, ...) if new.

    Keyed by Patient ID, or by name when the ID is empty or a placeholder (studies.patients): two people
    sent as "UNKNOWN" must not share one pseudonym and date shift.
    """
    patient_id = identity.get("patient_id", "")
    key = (patient_id if patient_id_identifies(patient_id) else identity.get("patient_name")) or ""
    lookup = hmac.new(secret, f"{key}|{identity.get('issuer', '')}".encode(), hashlib.sha256).hexdigest()
    existing = PatientPseudonym.objects.filter(project=project, lookup_hash=lookup).first()
    if existing is not None:
        return existing
    with transaction.atomic():
        locked = AnonymizationProject.objects.select_for_update().get(pk=project.pk)
        existing = PatientPseudonym.objects.filter(project=project, lookup_hash=lookup).first()
        if existing is not None:
            return existing
        number = locked.next_number
        AnonymizationProject.objects.filter(pk=project.pk).update(next_number=F("next_number") + 1)
        shift = -(int(lookup[:8], 16) % MAX_DATE_SHIFT_DAYS + 1)
        return PatientPseudonym.objects.create(
            clinic=project.clinic,
            project=project,
            lookup_hash=lookup,
            sealed_identity=_seal(clinic=project.clinic, plaintext=json.dumps(identity).encode(),
                                  purpose=f"identity:{project.uuid}"),
            pseudonym=f"{project.pseudonym_prefix}-{number:04d}",
            date_shift_days=shift,
        )


def _rectangles_for(project: AnonymizationProject, ds: pydicom.Dataset) -> tuple[PixelRectangle, ...]:
    manufacturer = str(ds.get("Manufacturer", "")).strip().lower()
    model = str(ds.get("ManufacturerModelName", "")).strip().lower()
    for device in project.device_rectangles or []:
        if str(device.get("manufacturer", "")).strip().lower() == manufacturer and (
            not device.get("model") or str(device["model"]).strip().lower() == model
        ):
            return tuple(PixelRectangle(*map(int, rect)) for rect in device.get("rectangles", []))
    return ()


def _record_uid_mappings(project: AnonymizationProject, mapped: dict[str, str]) -> None:
    known = set(
        UidMapping.objects.filter(project=project, new_uid__in=list(mapped.values())).values_list("new_uid", flat=True)
    )
    rows = [
        UidMapping(clinic=project.clinic, project=project, new_uid=new,
                   sealed_original=_seal(clinic=project.clinic, plaintext=original.encode(),
                                         purpose=f"uid:{project.uuid}"))
        for original, new in mapped.items()
        if new not in known
    ]
    UidMapping.objects.bulk_create(rows, ignore_conflicts=True)


def _save_part10(ds: pydicom.Dataset, path: str) -> None:
    """Write a Part 10 file, giving a file that arrived without File Meta Information its own."""
    ds.ensure_file_meta()
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


@dataclass(frozen=True)
class FileAnonymized:
    report: DeidentifyReport
    pseudonym: str


@dataclass
class AnonymizeBatch:
    """What the files of one batch (a job's batch) share: the project secret, the pseudonyms met so far,
    and the UID mappings to record, once for the batch (``uid_mappings_record``) before its files are
    stored, rather than a decryption and three statements per file."""

    project: AnonymizationProject
    secret: bytes = b""
    pseudonyms: dict[tuple[str, str, str], PatientPseudonym] = field(default_factory=dict)
    mapped: dict[str, str] = field(default_factory=dict)
    # Every file of a study repeats its study, series and frame of reference UIDs: derived once per batch.
    derived: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.secret = _project_secret(self.project)

    def uid_for(self, uid: str) -> str:
        """The project's replacement for ``uid``, to be recorded by ``uid_mappings_record``."""
        new = self.derived.get(uid)
        if new is None:
            new = self.derived[uid] = uid_derive(self.secret, uid)
        self.mapped[uid] = new
        return new

    def pseudonym(self, identity: dict[str, str]) -> PatientPseudonym:
        key = (identity.get("patient_id", ""), identity.get("issuer", ""), identity.get("patient_name", ""))
        if key not in self.pseudonyms:
            self.pseudonyms[key] = pseudonym_for(project=self.project, secret=self.secret, identity=identity)
        return self.pseudonyms[key]

    def uid_mappings_record(self) -> None:
        if self.mapped:
            _record_uid_mappings(self.project, self.mapped)
            self.mapped = {}


def file_anonymize(
    *, project: AnonymizationProject, source_path: str | BinaryIO, dest_path: str, options: list[str] | None = None,
    batch: AnonymizeBatch | None = None,
) -> FileAnonymized:
    """De-identify one DICOM file (a path, or a seekable file object) into ``dest_path`` under the project's
    mapping.

    Raises InvalidDicom for a file pydicom cannot read; the source is never modified. With ``batch``, the
    UID mappings are left in it for the caller to record (``batch.uid_mappings_record()``) before the
    output is stored; without, they are recorded here.
    """
    own_batch = batch is None
    batch = batch or AnonymizeBatch(project)
    try:
        ds = pydicom.dcmread(source_path, force=True)
        identity = {
            "patient_id": str(ds.get("PatientID", "")),
            "issuer": str(ds.get("IssuerOfPatientID", "")),
            "patient_name": str(ds.get("PatientName", "")),
        }
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        raise InvalidDicom(f"The file could not be read as DICOM: {type(exc).__name__}.") from exc
    pseudonym = batch.pseudonym(identity)
    ctx = DeidentifyContext(
        options=frozenset(options if options is not None else project.options),
        uid_for=batch.uid_for,
        pseudonym=pseudonym.pseudonym,
        date_shift=timedelta(days=pseudonym.date_shift_days),
        pixel_rectangles=_rectangles_for(project, ds),
    )
    report = deidentify(ds, ctx)
    _save_part10(ds, dest_path)
    if own_batch:
        batch.uid_mappings_record()
    return FileAnonymized(report=report, pseudonym=pseudonym.pseudonym)


# --- jobs ----------------------------------------------------------------------------------------------


@transaction.atomic
def job_create(
    *,
    clinic: Clinic,
    project: AnonymizationProject,
    studies: list[Study],
    series: list[Series] | None = None,
    options: list[str] | None = None,
    requested_by: User | None = None,
    by: Actor | None = None,
) -> AnonymizationJob:
    """Queue the anonymization of studies (or some of their series) as a Celery job with progress."""
    if not studies:
        raise PortalError("Choose at least one study to anonymize.")
    job = AnonymizationJob.objects.create(
        clinic=clinic,
        project=project,
        options=options_validate(options if options is not None else project.options),
        source_series=[str(s.uuid) for s in series or []],
        requested_by=requested_by,
    )
    job.source_studies.set(studies)
    audit_record(clinic=clinic, action="anonymization.requested", by=by, actor=requested_by,
                 object_type="anonymization_job", object_id=str(job.uuid),
                 details={"studies": [str(s.uuid) for s in studies], "project": str(project.uuid),
                          "options": job.options})
    transaction.on_commit(partial(current_app.tasks[JOB_START_TASK].delay, clinic_id=clinic.pk, job_id=job.pk))
    return job


def job_instances(job: AnonymizationJob) -> list[int]:
    instances = Instance.objects.for_clinic(job.clinic_id).filter(
        series__study__in=job.source_studies.all(), series__study__deleted_at__isnull=True
    )
    if job.source_series:
        instances = instances.filter(series__uuid__in=job.source_series)
    return list(instances.order_by("pk").values_list("pk", flat=True))


def job_start(*, job: AnonymizationJob) -> list[int]:
    """Count the job's instances and mark it running; return the instance ids to process."""
    instance_ids = job_instances(job)
    claimed = AnonymizationJob.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING, total=len(instance_ids), progress_at=timezone.now()
    )
    if not claimed:
        return []  # a previous delivery started it already
    if not instance_ids:
        job_finish_if_complete(job_id=job.pk)
    _batches_queue(job=job, instance_ids=instance_ids)
    return instance_ids


def _batches_queue(*, job: AnonymizationJob, instance_ids: list[int]) -> None:
    # One message per batch: each batch is stored with one index transaction and one replication message,
    # and the worker's processes take the batches in parallel. Batches never share an instance, and each
    # skips what is already done, so a batch queued twice (by the sweep) stores nothing twice.
    size = settings.ANONYMIZATION_JOB_BATCH
    for start in range(0, len(instance_ids), size):
        current_app.tasks[JOB_INSTANCES_TASK].delay(
            clinic_id=job.clinic_id, job_id=job.pk, instance_ids=instance_ids[start : start + size]
        )


def job_sweep(*, now: datetime | None = None) -> int:
    """Re-queue what is left of jobs that stopped moving (a killed worker, a lost message); return how many.

    A running job with no batch finished for ANONYMIZATION_JOB_STALE_SECONDS gets its unfinished instances
    queued again; a job still queued that long gets its start queued again. Runs across clinics (a
    maintenance task); each message is scoped to its job's clinic.
    """
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.ANONYMIZATION_JOB_STALE_SECONDS)
    swept = 0
    # Cross-clinic on purpose: the sweep looks after every clinic's jobs. A job never swept nor moved is
    # judged by its age.
    lost = AnonymizationJob.objects.filter(
        Q(progress_at__lt=stale) | Q(progress_at=None, created_at__lt=stale),
        status__in=[JobStatus.QUEUED, JobStatus.RUNNING],
    )
    for job in lost:
        # Claimed, so that two sweeps at once queue it once; if it stays lost, a later sweep claims it again.
        if not AnonymizationJob.objects.filter(pk=job.pk, status=job.status,
                                               progress_at=job.progress_at).update(progress_at=now):
            continue
        swept += 1
        if job.status == JobStatus.QUEUED:
            current_app.tasks[JOB_START_TASK].delay(clinic_id=job.clinic_id, job_id=job.pk)
            continue
        finished = set(job.items.values_list("instance_id", flat=True))
        left = [pk for pk in job_instances(job) if pk not in finished]
        if left:
            logger.warning("Anonymization job %s had not moved since %s: %d instances queued again",
                           job.uuid, job.progress_at, len(left))
            _batches_queue(job=job, instance_ids=left)
        else:
            job_finish_if_complete(job_id=job.pk)
    return swept


# A job's source objects up to this size are decrypted into memory rather than a temporary file.
SOURCE_IN_MEMORY_BYTES = 64 * 1024 * 1024


def job_instances_process(*, job: AnonymizationJob, instances: list[Instance]) -> None:
    """Anonymize a batch of stored instances and ingest the results as one batch.

    Safe to run twice like ``job_instance_process``: finished items are skipped, and the output bytes are
    the same each time, so a re-run after a crash finds them already present.
    """

    done = set(AnonymizationJobItem.objects.filter(job=job, instance_id__in=[i.pk for i in instances])
               .values_list("instance_id", flat=True))
    todo = [i for i in instances if i.pk not in done]
    workdir = tempfile.mkdtemp(prefix="anon-")
    items: list[AnonymizationJobItem] = []  # recorded together, once the batch is stored
    try:
        batch = AnonymizeBatch(job.project)
        ready: list[tuple[Instance, str, FileAnonymized]] = []
        for instance in todo:
            dest_path = os.path.join(workdir, f"{instance.pk}.dcm")
            try:
                # Decrypted into memory (a large object spills to disk), read by pydicom from there.
                with objects.object_open_seekable(clinic=job.clinic, key=instance.object_key,
                                                  max_memory=SOURCE_IN_MEMORY_BYTES) as plain:
                    anonymized = file_anonymize(project=job.project, source_path=plain, dest_path=dest_path,
                                                options=job.options, batch=batch)
            except PortalError as exc:
                items.append(_item(job=job, instance=instance, outcome=AnonymizationJobItem.Outcome.FAILED,
                                   reason=exc.message))
                continue
            ready.append((instance, dest_path, anonymized))
        # Before anything is stored, so every stored UID can be traced back (reidentify).
        batch.uid_mappings_record()
        results = instances_ingest(clinic=job.clinic, paths=[path for _, path, _ in ready],
                                   origin=Origin.anonymization(job=job)) if ready else []
        retry: StorageUnavailable | None = None
        # Each result study linked once per batch: (its source study, whether any of its files needs review).
        links: dict[int, tuple[Study, Study, bool]] = {}
        for (instance, _, anonymized), item in zip(ready, results, strict=True):
            if isinstance(item.error, StorageUnavailable):
                retry = item.error  # not a failure of the instance: the task retries it
                continue
            if item.error is not None:
                items.append(_item(job=job, instance=instance, outcome=AnonymizationJobItem.Outcome.FAILED,
                                   reason=item.error.message))
                continue
            assert item.result is not None
            study = item.result.instance.series.study
            _, source, review = links.get(study.pk, (study, instance.series.study, False))
            links[study.pk] = (study, source, review or anonymized.report.needs_review)
            items.append(_item(job=job, instance=instance, outcome=AnonymizationJobItem.Outcome.DONE,
                               needs_review=anonymized.report.needs_review))
        for study, source, needs_review in links.values():
            _study_link(job=job, study=study, source_study=source, needs_review=needs_review)
        # After the links, in one statement: a recorded item is never redone, so it must come last.
        AnonymizationJobItem.objects.bulk_create(items, ignore_conflicts=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    job_finish_if_complete(job_id=job.pk)
    if retry is not None:
        raise retry


def job_instance_process(*, job: AnonymizationJob, instance: Instance) -> None:
    """Anonymize one stored instance into a new instance of the clinic.

    Safe to run twice: a finished item is skipped, and the output bytes are the same each time, so a
    re-run after a crash finds them already present.
    """

    if AnonymizationJobItem.objects.filter(job=job, instance_id=instance.pk).exists():
        job_finish_if_complete(job_id=job.pk)
        return
    workdir = tempfile.mkdtemp(prefix="anon-")
    try:
        source_path = os.path.join(workdir, "source.dcm")
        dest_path = os.path.join(workdir, "anonymized.dcm")
        with objects.object_open(clinic=job.clinic, key=instance.object_key) as stream, open(source_path, "wb") as out:
            shutil.copyfileobj(stream, out, 1024 * 1024)
        anonymized = file_anonymize(project=job.project, source_path=source_path, dest_path=dest_path,
                                    options=job.options)
        result = instance_ingest(clinic=job.clinic, source_path=dest_path, origin=Origin.anonymization(job=job))
        study = result.instance.series.study
        with transaction.atomic():
            link, _ = AnonymizedStudy.objects.get_or_create(
                study=study,
                defaults={"clinic": job.clinic, "source_study": instance.series.study, "project": job.project,
                          "job": job},
            )
            if anonymized.report.needs_review and not link.needs_review:
                AnonymizedStudy.objects.filter(pk=link.pk).update(needs_review=True)
        _item_record(job=job, instance=instance, outcome=AnonymizationJobItem.Outcome.DONE,
                     needs_review=anonymized.report.needs_review)
    except PortalError as exc:
        _item_record(job=job, instance=instance, outcome=AnonymizationJobItem.Outcome.FAILED, reason=exc.message)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    job_finish_if_complete(job_id=job.pk)


def _item(*, job: AnonymizationJob, instance: Instance, outcome: str, needs_review: bool = False,
          reason: str = "") -> AnonymizationJobItem:
    return AnonymizationJobItem(job=job, instance_id=instance.pk, outcome=outcome, needs_review=needs_review,
                                reason=reason[:300])


def _study_link(*, job: AnonymizationJob, study: Study, source_study: Study, needs_review: bool) -> None:
    """Record that ``study`` holds the job's anonymized copy of ``source_study``; flag it for review if asked."""
    with transaction.atomic():
        link, _ = AnonymizedStudy.objects.get_or_create(
            study=study,
            defaults={"clinic": job.clinic, "source_study": source_study, "project": job.project, "job": job},
        )
        if needs_review and not link.needs_review:
            AnonymizedStudy.objects.filter(pk=link.pk).update(needs_review=True)


def _item_record(*, job: AnonymizationJob, instance: Instance, outcome: str, needs_review: bool = False,
                 reason: str = "") -> None:
    AnonymizationJobItem.objects.get_or_create(
        job=job, instance_id=instance.pk,
        defaults={"outcome": outcome, "needs_review": needs_review, "reason": reason[:300]},
    )


@transaction.atomic
def job_finish_if_complete(*, job_id: int) -> None:
    """Bring the job's counts up to date from its items, and close it once every instance is done."""
    job = AnonymizationJob.objects.select_for_update().select_related("clinic").get(pk=job_id)
    counts = job.items.aggregate(
        done=Count("pk", filter=Q(outcome=AnonymizationJobItem.Outcome.DONE)),
        failed=Count("pk", filter=Q(outcome=AnonymizationJobItem.Outcome.FAILED)),
        needs_review=Count("pk", filter=Q(needs_review=True)),
    )
    job.done, job.failed, job.needs_review = counts["done"], counts["failed"], counts["needs_review"]
    failures = list(job.items.filter(outcome=AnonymizationJobItem.Outcome.FAILED).values_list("instance_id", "reason")[:100])
    uuids = dict(Instance.objects.filter(pk__in=[pk for pk, _ in failures]).values_list("pk", "uuid"))
    job.errors = [{"instance": str(uuids.get(pk, "")), "reason": reason} for pk, reason in failures]
    job.progress_at = timezone.now()
    fields = ["done", "failed", "needs_review", "errors", "progress_at"]
    finished = job.status == JobStatus.RUNNING and job.done + job.failed >= job.total
    if finished:
        job.status = JobStatus.DONE if job.done or not job.total else JobStatus.FAILED
        job.finished_at = timezone.now()
        fields += ["status", "finished_at"]
    job.save(update_fields=fields)
    if finished:
        audit_record(clinic=job.clinic, action="anonymization.finished", actor_label="system",
                     object_type="anonymization_job", object_id=str(job.uuid),
                     details={"done": job.done, "failed": job.failed, "needs_review": job.needs_review},
                     result="success" if job.status == JobStatus.DONE else "failure")


def job_result_studies(*, job: AnonymizationJob) -> list[Study]:
    return [
        row.study
        for row in AnonymizedStudy.objects.for_clinic(job.clinic_id).filter(job=job).select_related("study")
    ]


# --- anonymize on ingest -----------------------------------------------------------------------------


def project_for_ingest(
    *, clinic: Clinic, api_token: Any = None, dicom_node: Any = None, upload_link: Any = None
) -> AnonymizationProject | None:
    """The project under which an arriving file must be anonymized, or None to store it as it is.

    The most specific rule wins: the upload link's own project, then the API token's or the DICOM
    node's rule, then the clinic-wide one.
    """
    if upload_link is not None and upload_link.anonymize_project_id:
        return upload_link.anonymize_project
    # Every rule that could apply, in one statement compiled once (this runs for each batch of every way
    # in, and most clinics have no rule): the project itself is read only when a rule applies.
    values: dict[str, int | str] = {"clinic_id": clinic.pk}
    if api_token is not None:
        values["api_token_id"] = api_token.pk
    if dicom_node is not None:
        values["dicom_node_id"] = dicom_node.pk
    rules = prepared.rows("anonymize.ingest_rules", _ingest_rule_rows, **values)
    for matches in (
        lambda r: api_token is not None and r["api_token_id"] == api_token.pk,
        lambda r: dicom_node is not None and r["dicom_node_id"] == dicom_node.pk,
        lambda r: r["applies_to"] == IngestAnonymization.AppliesTo.CLINIC,
    ):
        rule = next((r for r in rules if matches(r)), None)
        if rule is not None:
            return AnonymizationProject.objects.for_clinic(clinic).get(pk=rule["project_id"])
    return None


def _ingest_rule_rows(*, clinic_id: int, api_token_id: int | None = None, dicom_node_id: int | None = None) -> QuerySet:
    applies = Q(applies_to=IngestAnonymization.AppliesTo.CLINIC)
    if api_token_id is not None:
        applies |= Q(api_token_id=api_token_id)
    if dicom_node_id is not None:
        applies |= Q(dicom_node_id=dicom_node_id)
    return (
        IngestAnonymization.objects.filter(applies, clinic_id=clinic_id).order_by("pk")
        .values("applies_to", "api_token_id", "dicom_node_id", "project_id")
    )


@transaction.atomic
def ingest_rules_set(
    *, project: AnonymizationProject, clinic_wide: bool, api_tokens: list[Any], dicom_nodes: list[Any],
    user: User | None = None, by: Actor | None = None,
) -> None:
    """Make this project the anonymize-on-ingest rule for the clinic and/or the given tokens and nodes.

    A token, node or the clinic already ruled by another project moves to this one.
    """
    clinic = project.clinic
    rules = IngestAnonymization.objects.for_clinic(clinic)
    rules.filter(project=project).delete()
    if clinic_wide:
        rules.filter(applies_to=IngestAnonymization.AppliesTo.CLINIC).delete()
        IngestAnonymization.objects.create(clinic=clinic, project=project,
                                           applies_to=IngestAnonymization.AppliesTo.CLINIC)
    for token in api_tokens:
        rules.filter(api_token=token).delete()
        IngestAnonymization.objects.create(clinic=clinic, project=project, api_token=token,
                                           applies_to=IngestAnonymization.AppliesTo.API_TOKEN)
    for node in dicom_nodes:
        rules.filter(dicom_node=node).delete()
        IngestAnonymization.objects.create(clinic=clinic, project=project, dicom_node=node,
                                           applies_to=IngestAnonymization.AppliesTo.DICOM_NODE)
    audit_record(clinic=clinic, action="anonymization.ingest_rules_set", by=by, actor=user,
                 object_type="anonymization_project", object_id=str(project.uuid),
                 details={"clinic_wide": clinic_wide, "api_tokens": [str(t.uuid) for t in api_tokens],
                          "dicom_nodes": [str(n.uuid) for n in dicom_nodes]})


def anonymize_for_ingest(*, project: AnonymizationProject, source_path: str) -> tuple[str, FileAnonymized]:
    """Write an anonymized copy of an arriving file beside it; return its path. The original is never
    stored: the caller ingests the copy and deletes both temporary files."""
    dest_path = source_path + ".anon"
    return dest_path, file_anonymize(project=project, source_path=source_path, dest_path=dest_path)


def ingest_result_link(*, project: AnonymizationProject, study: Study, needs_review: bool) -> None:
    """Mark a study that arrived anonymized (it has no stored source)."""
    link, created = AnonymizedStudy.objects.get_or_create(
        study=study, defaults={"clinic": project.clinic, "project": project, "needs_review": needs_review}
    )
    if needs_review and not link.needs_review:
        AnonymizedStudy.objects.filter(pk=link.pk).update(needs_review=True)


# --- re-identification ---------------------------------------------------------------------------------


def reidentify(
    *, project: AnonymizationProject, pseudonym: str = "", uid: str = "", user: User, by: Actor | None = None
) -> dict[str, Any]:
    """Reveal who a pseudonym is, or which original UID a replacement UID stands for (owners/admins)."""
    result: dict[str, Any] = {}
    if pseudonym:
        row = PatientPseudonym.objects.for_clinic(project.clinic).filter(project=project, pseudonym=pseudonym.strip()).first()
        if row is None:
            raise PortalError(f"No patient has the pseudonym '{pseudonym}' in this project.")
        result["identity"] = json.loads(_unseal(clinic=project.clinic, sealed=row.sealed_identity,
                                                purpose=f"identity:{project.uuid}"))
    if uid:
        mapping = UidMapping.objects.for_clinic(project.clinic).filter(project=project, new_uid=uid.strip()).first()
        if mapping is None:
            raise PortalError(f"The UID '{uid}' was not made by this project.")
        result["original_uid"] = _unseal(clinic=project.clinic, sealed=mapping.sealed_original,
                                         purpose=f"uid:{project.uuid}").decode()
    if not result:
        raise PortalError("Give a pseudonym or a UID to look up.")
    audit_record(clinic=project.clinic, action="anonymization.reidentified", by=by, actor=user,
                 object_type="anonymization_project", object_id=str(project.uuid),
                 details={"pseudonym": pseudonym, "uid_lookup": bool(uid)})
    return result

"""Outbound DICOM workflows: send a study to a node, migrate a node's archive in, route incoming images.

Jobs keep every fact in the database, so they are resumable: a task claims a job (or one study of a
migration) with a conditional update, does a bounded slice of work, records it, and queues itself again.
A periodic sweep (``outbound_sweep``) re-queues jobs whose worker stopped reporting, so a killed worker or a
lost queue message only delays a job. Re-running any step stores nothing twice: ingest answers "already
present" for an instance it holds, and migrations skip instances our index already has.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone
from pydicom import Dataset

from billing import selectors as billing_selectors
from portal.celery import app
from portal.exceptions import PortalError
from studies.dimse.handlers import OUT_OF_RESOURCES, SUCCESS, store_refusal
from studies.errors import (
    AnnouncedUidMismatch,
    InstanceConflict,
    InstanceHeld,
    InvalidDicom,
    QuotaExceeded,
    StudyMismatch,
)
from studies.ingest import GroupCommit, Origin, instances_ingest
from studies.models import DicomNode, Instance, Series, Study
from studies.outbound import dicomweb_source, scu
from studies.outbound.models import (
    MIGRATION_ASSOCIATIONS_DEFAULT,
    MIGRATION_ASSOCIATIONS_MAX,
    JobStatus,
    MigrationInstance,
    MigrationJob,
    MigrationStudy,
    RouteDelivery,
    RoutingRule,
    SendJob,
    SendResult,
)
from tenants.audit import Actor, audit_record
from tenants.models import Clinic, User

logger = logging.getLogger(__name__)

# A migration task works on studies for about this long, then queues itself again (fair to other work).
MIGRATION_SLICE_SECONDS = 60
# Retrieval attempts per study before its missing instances are reported as missing.
MIGRATION_STUDY_ATTEMPTS = 3
# How long the next attempt at studies with instances still missing waits: a passing fault (storage full for a
# moment, the source busy) then has time to pass, instead of a study's attempts being spent within seconds.
MIGRATION_RETRY_SECONDS = 60
# Instances named in one image-level retrieve.
RETRIEVE_UIDS_PER_REQUEST = 200
# Instances of one WADO-RS response handed to ingest at once (one lookup, one index transaction).
INGEST_BATCH = 32
# How long a C-GET batch waits for the files the job's other associations are receiving (see GroupCommit).
GROUP_LINGER_SECONDS = 0.05
ROUTE_BATCH = 200
ROUTE_MAX_ATTEMPTS = 20
MISSING_LISTED = 1000
DATE_RE_LENGTH = 8


class OutboundError(PortalError):
    """A send, migration or routing request that cannot be done as asked."""


@dataclass(frozen=True)
class MigrationReport:
    studies_total: int
    studies_verified: int
    studies_incomplete: int
    instances_listed: int
    instances_present: int
    missing: list[str]
    # Of the missing, those ingest refused for the file itself, with the reason (not asked for again).
    refused: dict[str, str]

    def missing_reasons(self) -> list[tuple[str, str]]:
        """Each missing instance with why: the refusal, or "" when it was not received."""
        return [(uid, self.refused.get(uid, "")) for uid in self.missing]


def node_get(*, clinic: Clinic, ae_title: str) -> DicomNode:
    """Return the clinic's registered node with this AE title; raise OutboundError if there is none."""
    node = DicomNode.objects.for_clinic(clinic).filter(ae_title=(ae_title or "").strip()).first()
    if node is None:
        raise OutboundError(f"No DICOM node with the AE title '{ae_title}' is registered for this clinic.")
    return node


# --- Sending ---------------------------------------------------------------------------------------


def send_create(
    *, clinic: Clinic, study: Study, node: DicomNode, series: Series | None = None,
    actor: User | None = None, by: Actor | None = None,
) -> SendJob:
    """Queue a send of a live study (or one of its series) to a registered node; audited."""
    if study.clinic_id != clinic.pk or node.clinic_id != clinic.pk:
        raise OutboundError("No such study or node.")
    if study.deleted_at is not None:
        raise OutboundError("This study is in the trash; restore it before sending it.")
    instances = Instance.objects.for_clinic(clinic).filter(series__study=study)
    if series is not None:
        instances = instances.filter(series=series)
    with transaction.atomic():
        job = SendJob.objects.create(clinic=clinic, node=node, study=study, series=series,
                                     instances_total=instances.count(), created_by=actor)
        audit_record(clinic=clinic, action="study.sent", by=by, actor=actor, object_type="study",
                     object_id=str(study.uuid),
                     details={"send": str(job.uuid), "node": node.ae_title, "instances": job.instances_total,
                              "series": str(series.uuid) if series else ""})
        transaction.on_commit(lambda: job_enqueue(job=job))
    return job


def _enqueue(task_name: str, countdown: float = 0, **kwargs: int) -> None:
    # Tasks are named, not imported: tasks import these services, never the reverse.
    app.signature(task_name, kwargs=kwargs).apply_async(countdown=countdown or None)


def job_enqueue(*, job: SendJob | MigrationJob, countdown: float = 0) -> None:
    """Queue a task for the job and note when, so the sweep does not queue it again meanwhile."""
    task = "outbound.send_job_run" if isinstance(job, SendJob) else "outbound.migration_job_run"
    type(job).objects.filter(pk=job.pk).update(queued_at=timezone.now() + timedelta(seconds=countdown))
    _enqueue(task, countdown=countdown, clinic_id=job.clinic_id, job_id=job.pk)


def _stale() -> timedelta:
    return timedelta(seconds=settings.OUTBOUND_JOB_STALE_SECONDS)


def _unheld(now: datetime) -> Q:
    return Q(heartbeat_at=None) | Q(heartbeat_at__lt=now - _stale())


def _claim(model: type[SendJob] | type[MigrationJob], job_id: int) -> bool:
    """Take the job's lease unless another worker holds it (a recent heartbeat); False if it does."""
    now = timezone.now()
    active = Q(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])
    return bool(model.objects.filter(active, _unheld(now), pk=job_id).update(status=JobStatus.RUNNING,
                                                                              heartbeat_at=now))


def _release(model: type[SendJob] | type[MigrationJob], job_id: int) -> None:
    model.objects.filter(pk=job_id).update(heartbeat_at=None)


def send_run(*, job: SendJob) -> SendJob:
    """Send every instance of the job not yet accepted by the node; record each answer.

    Safe to run again after a crash: instances the node already accepted are not sent twice.
    Raises scu.NodeUnreachable (job left running, to be retried) when the node cannot be reached.
    """
    if not _claim(SendJob, job.pk):
        job.refresh_from_db()
        return job
    clinic = job.clinic
    done = SendResult.objects.filter(job=job, is_success=True).values_list("instance_id", flat=True)
    instances = Instance.objects.for_clinic(clinic).filter(series__study_id=job.study_id).exclude(pk__in=done)
    if job.series_id:
        instances = instances.filter(series_id=job.series_id)
    pending = list(instances.defer("metadata").order_by("series_id", "instance_number", "pk"))
    last_beat = [time.monotonic()]

    def record(result: scu.StoreResult) -> None:
        SendResult.objects.update_or_create(
            job=job, instance=result.instance,
            defaults={"clinic": clinic, "is_success": result.is_success, "status_code": result.status,
                      "error": result.error[:200], "sent_at": timezone.now()},
        )
        if time.monotonic() - last_beat[0] > 10:
            last_beat[0] = time.monotonic()
            _send_counters_save(job)

    try:
        scu.instances_store(clinic=clinic, node=job.node, instances=pending, on_result=record)
    except scu.NodeUnreachable as exc:
        _send_counters_save(job)
        SendJob.objects.filter(pk=job.pk).update(error=str(exc)[:300], heartbeat_at=None)
        raise
    _send_counters_save(job, finished=True)
    job.refresh_from_db()
    audit_record(clinic=clinic, action="study.sent", actor_label=f"send:{job.uuid}", object_type="study",
                 object_id=str(job.study.uuid), result="success" if job.status == JobStatus.DONE else "failure",
                 details={"send": str(job.uuid), "node": job.node.ae_title, "done": job.instances_done,
                          "failed": job.instances_failed})
    return job


def send_give_up(*, job: SendJob, reason: str) -> None:
    """Mark a send failed after its retries ran out (the node stayed unreachable)."""
    _send_counters_save(job)
    SendJob.objects.filter(pk=job.pk).exclude(status=JobStatus.DONE).update(
        status=JobStatus.FAILED, error=reason[:300], finished_at=timezone.now())


def _send_counters_save(job: SendJob, *, finished: bool = False) -> None:
    counts = SendResult.objects.filter(job=job).aggregate(
        done=Count("pk", filter=Q(is_success=True)), failed=Count("pk", filter=Q(is_success=False)))
    fields: dict[str, object] = {"instances_done": counts["done"], "instances_failed": counts["failed"],
                                 "heartbeat_at": timezone.now()}
    if finished:
        fields["status"] = JobStatus.DONE if not counts["failed"] else JobStatus.FAILED
        fields["finished_at"] = timezone.now()
        fields["error"] = ""
    SendJob.objects.filter(pk=job.pk).update(**fields)


def send_results(*, job: SendJob) -> list[SendResult]:
    return list(SendResult.objects.for_clinic(job.clinic_id).filter(job=job).select_related("instance")
                .order_by("instance__series_id", "instance__instance_number"))


# --- Migration -------------------------------------------------------------------------------------


def _date_clean(value: str, label: str) -> str:
    value = (value or "").strip().replace("-", "")
    if value and (len(value) != DATE_RE_LENGTH or not value.isdigit()):
        raise OutboundError(f"{label} must be a date written YYYYMMDD.")
    return value


def _dicomweb_credentials(*, token: str, username: str, password: str) -> tuple[MigrationJob.Auth, dict[str, str]]:
    if token and (username or password):
        raise OutboundError("Give either a bearer token or a user name and password, not both.")
    if token:
        return MigrationJob.Auth.BEARER, {"token": token}
    if username or password:
        if not (username and password):
            raise OutboundError("Basic authentication needs both a user name and a password.")
        return MigrationJob.Auth.BASIC, {"username": username, "password": password}
    return MigrationJob.Auth.NONE, {}


def migration_create(
    *, clinic: Clinic, node: DicomNode | None = None, dicomweb_url: str = "", dicomweb_token: str = "",
    dicomweb_username: str = "", dicomweb_password: str = "", study_date_from: str = "",
    study_date_to: str = "", modalities: Iterable[str] = (), patient_ids: Iterable[str] = (),
    method: str = "", max_instances_per_second: int = 0, window_start_hour: int = 0, window_end_hour: int = 0,
    associations: int | None = None, actor: User | None = None, by: Actor | None = None,
) -> MigrationJob:
    """Queue a migration of the source's studies in scope into the clinic; audited.

    The source is a registered node, or a DICOMweb service (``dicomweb_url``, with a bearer token or a user
    name and password, sealed with the clinic's key). Raises OutboundError for a source or scope that cannot
    be asked (two sources or none, a bad URL or one whose host is internal, bad dates, inverted range, hours).
    """
    if (node is None) == (not dicomweb_url):
        raise OutboundError("Choose the source: a registered DICOM node or a DICOMweb URL (one of them).")
    if node is not None and node.clinic_id != clinic.pk:
        raise OutboundError("No such DICOM node.")
    auth, url = MigrationJob.Auth.NONE, ""
    credentials: dict[str, str] = {}
    if node is None:
        try:
            url = dicomweb_source.url_clean(dicomweb_url)
        except ValueError as exc:
            raise OutboundError(str(exc)) from exc
        auth, credentials = _dicomweb_credentials(token=dicomweb_token.strip(), username=dicomweb_username.strip(),
                                                  password=dicomweb_password)
        if method and method != MigrationJob.Method.WADO:
            raise OutboundError("A DICOMweb source is retrieved by WADO-RS.")
        method = MigrationJob.Method.WADO
    else:
        if dicomweb_token or dicomweb_username or dicomweb_password:
            raise OutboundError("Credentials are for a DICOMweb source; a DICOM node has none.")
        method = method or MigrationJob.Method.GET
        if method not in (MigrationJob.Method.GET, MigrationJob.Method.MOVE):
            raise OutboundError("The retrieve method is C-MOVE or C-GET.")
    date_from = _date_clean(study_date_from, "The first study date")
    date_to = _date_clean(study_date_to, "The last study date")
    if date_from and date_to and date_from > date_to:
        raise OutboundError("The first study date is after the last one.")
    if not (0 <= window_start_hour <= 23 and 0 <= window_end_hour <= 23):
        raise OutboundError("Time window hours go from 0 to 23.")
    associations = MIGRATION_ASSOCIATIONS_DEFAULT if associations is None else int(associations)
    if not 1 <= associations <= MIGRATION_ASSOCIATIONS_MAX:
        raise OutboundError(f"A migration uses from 1 to {MIGRATION_ASSOCIATIONS_MAX} associations at once.")
    cleaned_modalities = sorted({m.strip().upper() for m in modalities if m and m.strip()})
    cleaned_patients = sorted({p.strip() for p in patient_ids if p and p.strip()})
    if any(len(m) > 16 for m in cleaned_modalities) or any(len(p) > 64 for p in cleaned_patients):
        raise OutboundError("A modality is at most 16 characters and a patient ID at most 64.")
    if url:
        # Answer at once when the host is internal; the check at each connection is the real guard.
        try:
            dicomweb_source.url_address_check(url)
        except dicomweb_source.AddressRefused as exc:
            raise OutboundError(exc.message) from exc
    sealed = dicomweb_source.credentials_seal(clinic=clinic, url=url, credentials=credentials) if url else b""
    with transaction.atomic():
        job = MigrationJob.objects.create(
            clinic=clinic, node=node, dicomweb_url=url, dicomweb_auth=auth, dicomweb_credentials=sealed,
            method=method, study_date_from=date_from, study_date_to=date_to,
            modalities=cleaned_modalities, patient_ids=cleaned_patients,
            max_instances_per_second=max(0, int(max_instances_per_second)), associations=associations,
            window_start_hour=window_start_hour, window_end_hour=window_end_hour, created_by=actor,
        )
        # The scope's patient IDs are patient data: the audit entry counts them instead of naming them.
        # A DICOMweb source is named by its URL and how it authenticates, never by its credentials.
        source = {"node": node.ae_title} if node is not None else {"dicomweb_url": url, "auth": auth or "none"}
        audit_record(clinic=clinic, action="migration.created", by=by, actor=actor,
                     object_type="migration", object_id=str(job.uuid),
                     details={**source, "method": method, "study_date_from": date_from,
                              "study_date_to": date_to, "modalities": cleaned_modalities,
                              "patient_ids": len(cleaned_patients), "associations": associations})
        transaction.on_commit(lambda: job_enqueue(job=job))
    return job


def migration_in_window(*, job: MigrationJob, now: datetime | None = None) -> bool:
    """Say whether the job may run now (its hours, in the server's time zone; equal hours: always)."""
    if job.window_start_hour == job.window_end_hour:
        return True
    hour = timezone.localtime(now or timezone.now()).hour
    if job.window_start_hour < job.window_end_hour:
        return job.window_start_hour <= hour < job.window_end_hour
    return hour >= job.window_start_hour or hour < job.window_end_hour


def _source_node(job: MigrationJob) -> DicomNode:
    """The DICOM node a DIMSE migration reads from (a job has either a node or a DICOMweb URL)."""
    if job.node is None:
        raise OutboundError("This migration has no DICOM node to read from.")
    return job.node


def _dicomweb(job: MigrationJob) -> dicomweb_source.DicomwebSource:
    return dicomweb_source.DicomwebSource(clinic=job.clinic, url=job.dicomweb_url, auth=job.dicomweb_auth,
                                          sealed=bytes(job.dicomweb_credentials or b""))


def _source_studies(job: MigrationJob, patient_id: str) -> list[scu.ListedStudy]:
    if not job.is_dicomweb:
        return scu.studies_find(clinic=job.clinic, node=_source_node(job), study_date_from=job.study_date_from,
                                study_date_to=job.study_date_to, modalities=job.modalities, patient_id=patient_id)
    source = _dicomweb(job)
    # One QIDO-RS query per modality, as the C-FIND side does: not every server takes a list of values.
    return [study for modality in job.modalities or [""]
            for study in source.studies_search(study_date_from=job.study_date_from,
                                               study_date_to=job.study_date_to, modality=modality,
                                               patient_id=patient_id)]


def migration_list_studies(*, job: MigrationJob) -> None:
    """Ask the source for the studies in scope and record each one (once)."""
    clinic = job.clinic
    listed: dict[str, scu.ListedStudy] = {}
    for patient_id in job.patient_ids or [""]:
        for study in _source_studies(job, patient_id):
            listed[study.study_instance_uid] = study
    MigrationStudy.objects.bulk_create(
        [MigrationStudy(clinic=clinic, job=job, study_instance_uid=uid[:64], instances_listed=study.instances or 0)
         for uid, study in listed.items()],
        ignore_conflicts=True,
    )
    studies = MigrationStudy.objects.filter(job=job)
    MigrationJob.objects.filter(pk=job.pk).update(
        is_listed=True, studies_total=studies.count(),
        instances_total=studies.aggregate(total=Sum("instances_listed"))["total"] or 0,
        started_at=timezone.now(), heartbeat_at=timezone.now(),
    )


def _present_uids(*, clinic: Clinic, uids: list[str]) -> set[str]:
    present: set[str] = set()
    for start in range(0, len(uids), 1000):
        chunk = uids[start:start + 1000]
        present.update(Instance.objects.for_clinic(clinic).filter(sop_instance_uid__in=chunk)
                       .values_list("sop_instance_uid", flat=True))
    return present


def _mark_present(*, study: MigrationStudy) -> tuple[list[str], list[str]]:
    """Record which listed instances our index holds; return the SOP Instance UIDs still missing, and those
    of them worth retrieving again (not refused for the file itself)."""
    rows = list(MigrationInstance.objects.filter(study=study).values_list("sop_instance_uid", "is_present",
                                                                           "refusal"))
    missing = {uid: refusal for uid, is_present, refusal in rows if not is_present}
    present = _present_uids(clinic=study.job.clinic, uids=list(missing))
    if present:
        MigrationInstance.objects.filter(study=study, sop_instance_uid__in=present).update(is_present=True)
    still = [uid for uid in missing if uid not in present]
    return still, [uid for uid in still if not missing[uid]]


class _QuotaStop(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Throttle:
    """At most ``rate`` instances per second over all of a job's associations together (0: no limit)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def take(self, count: int = 1) -> None:
        """Wait until ``count`` more instances may go in (slots are handed out in turn across threads)."""
        if not self.rate or count <= 0:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + count / self.rate
        if slot > now:
            time.sleep(slot - now)


@dataclass
class _Run:
    """What a migration slice's associations share: the job, the throttle, and why they must stop."""

    job: MigrationJob
    throttle: _Throttle
    quota_message: list[str]
    # Each C-GET file with the SOP Instance UID its C-STORE announced.
    received: GroupCommit[tuple[str, str], int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def dimse_ingest(self, origin: Origin) -> GroupCommit[tuple[str, str], int]:
        """The one group commit of the slice's C-GET associations (made by the first to ask).

        A C-STORE is answered once its file's batch is committed; what the job's other associations receive
        meanwhile goes into the same batch (studies.ingest.group).
        """
        with self._lock:
            if self.received is None:
                self.received = GroupCommit(
                    lambda received: _ingest_statuses(run=self, paths=[path for path, _ in received], origin=origin,
                                                      announced_uids=[uid for _, uid in received]),
                    limit=INGEST_BATCH, linger_seconds=GROUP_LINGER_SECONDS,
                )
            return self.received


def _ingest_statuses(
    *, run: _Run, paths: list[str], origin: Origin, announced_uids: list[str] | None = None,
    study_uid: str | None = None,
) -> list[int]:
    """Ingest retrieved files as one batch; answer a DICOM status per file.

    A file is answered success only once ingest returned it stored (or already present): its object
    durable and its index rows committed. A full quota is remembered so that the job stops. With
    ``announced_uids`` (C-GET: each C-STORE's Affected SOP Instance UID) a file holding another instance is
    refused as the DIMSE listener refuses it: the announced one stays missing and is reported so. With
    ``study_uid`` (WADO-RS) a file of another study is refused the same way.
    """
    if run.quota_message:
        return [OUT_OF_RESOURCES] * len(paths)
    run.throttle.take(len(paths))
    statuses = []
    items = instances_ingest(clinic=run.job.clinic, paths=paths, origin=origin, announced_uids=announced_uids,
                             study_uid=study_uid)
    for number, item in enumerate(items):
        error = item.error
        if error is None:
            statuses.append(SUCCESS)
            continue
        status, reason = store_refusal(error)
        if isinstance(error, QuotaExceeded):
            run.quota_message.append(error.message)
        else:
            logger.warning("Migration %s: an instance of the source was refused: %s", run.job.uuid, error)
        if isinstance(error, _PERMANENT_REFUSALS) and announced_uids:
            # Recorded on the instance asked for (or announced) only: a part of a whole-study answer may be
            # another study's instance, listed in that study of the job; asked for alone, it is recorded then.
            _refusal_record(job=run.job, sop_instance_uid=announced_uids[number], reason=reason)
        statuses.append(status)
    return statuses


# What ingest refuses for the file itself: the source sends the same file when asked again (a held one is
# held again), so such an instance is not retrieved again but reported, with the reason, until it is here.
_PERMANENT_REFUSALS = (AnnouncedUidMismatch, StudyMismatch, InvalidDicom, InstanceConflict, InstanceHeld)


def _refusal_record(*, job: MigrationJob, sop_instance_uid: str, reason: str) -> None:
    if sop_instance_uid:
        MigrationInstance.objects.filter(study__job=job, sop_instance_uid=sop_instance_uid).update(
            refusal=reason[:200])


def _chunks(missing: list[str], whole_study: bool, size: int = RETRIEVE_UIDS_PER_REQUEST) -> list[list[str] | None]:
    if whole_study:
        return [None]
    return [missing[i:i + size] for i in range(0, len(missing), size)]


def _retrieve_dimse(*, run: _Run, study: MigrationStudy, listed: list[scu.ListedInstance],
                    missing: list[str]) -> None:
    job = run.job
    clinic, node = job.clinic, _source_node(job)
    sop_classes = {item.sop_class_uid for item in listed if item.sop_class_uid}
    origin = Origin.migration(node=node)

    received = run.dimse_ingest(origin)

    def on_file(path: str, announced_uid: str) -> int:
        # Runs inside pynetdicom's C-STORE handler, which turns exceptions into a failure status; returns
        # once the file's batch is committed (files of the job's other associations go in with it).
        try:
            return received.submit((path, announced_uid))
        except Exception:
            # Not stored: the instance stays missing and is retried.
            logger.exception("Migration %s: ingest failed for a received instance", job.uuid)
            return OUT_OF_RESOURCES

    if job.method == MigrationJob.Method.GET:
        # The throttle holds as the files are ingested (_ingest_statuses).
        chunks = _chunks(missing, len(missing) == len(listed))
    else:
        # C-MOVE's files go to the DIMSE listener, out of the job's sight: with a rate, each request asks for
        # at most a second's worth of instances, and waits for its turn before it goes.
        rate = run.throttle.rate
        chunks = _chunks(missing, not rate and len(missing) == len(listed),
                         size=min(rate, RETRIEVE_UIDS_PER_REQUEST) if rate else RETRIEVE_UIDS_PER_REQUEST)
    for chunk in chunks:
        if run.quota_message:
            break
        if job.method == MigrationJob.Method.GET:
            with received.receiver():
                scu.study_get(clinic=clinic, node=node, study_instance_uid=study.study_instance_uid,
                              sop_class_uids=sop_classes or {"1.2.840.10008.5.1.4.1.1.7"}, on_file=on_file,
                              sop_instance_uids=chunk)
        else:
            run.throttle.take(len(chunk or []))
            scu.study_move(clinic=clinic, node=node, study_instance_uid=study.study_instance_uid,
                           sop_instance_uids=chunk)


def _retrieve_dicomweb(*, run: _Run, study: MigrationStudy, listed: list[scu.ListedInstance],
                       missing: list[str]) -> None:
    """WADO-RS: the whole study in one streamed request, or only the missing instances one by one.

    The parts of a response are ingested INGEST_BATCH at a time: nothing is answered to the source, and
    an instance counts as migrated only once ingest committed it, so a crash mid-batch loses nothing.
    """
    job = run.job
    source = _dicomweb(job)
    origin = Origin.migration_dicomweb(job=job)
    # Each part with the SOP Instance UID it was asked for ("" in a whole study: any instance of it will do);
    # ingest refuses a part of another study, or another instance than the one asked.
    parts: Iterable[tuple[str, Dataset]]
    if len(missing) == len(listed):
        parts = (("", dataset) for dataset in source.study_iter(study_instance_uid=study.study_instance_uid))
    else:
        series_of = {item.sop_instance_uid: item.series_instance_uid for item in listed}
        parts = source.instances_iter(study_instance_uid=study.study_instance_uid,
                                      uids=[(series_of[uid], uid) for uid in missing])
    batch: list[str] = []
    asked: list[str] = []

    def ingest() -> None:
        _ingest_statuses(run=run, paths=batch, origin=origin, announced_uids=asked,
                         study_uid=study.study_instance_uid)
        _unlink_all(batch)
        asked.clear()

    try:
        for asked_uid, dataset in parts:
            if run.quota_message:
                break
            fd, path = tempfile.mkstemp(suffix=".dcm", dir=settings.FILE_UPLOAD_TEMP_DIR)
            with os.fdopen(fd, "wb") as handle:
                try:
                    dataset.save_as(handle, enforce_file_format=True)
                except (ValueError, AttributeError, TypeError) as exc:
                    # E.g. no transfer syntax in the part: the instance stays missing and is reported.
                    logger.warning("Migration %s: an instance of the source cannot be written: %s", job.uuid, exc)
                    _refusal_record(job=job, sop_instance_uid=asked_uid,
                                    reason=f"The source's data set cannot be written as a DICOM file: {exc}")
                    os.unlink(path)
                    continue
            batch.append(path)
            asked.append(asked_uid)
            # With a rate, a batch is at most a second's worth: the throttle's wait pauses reading the response,
            # which a source could otherwise take for a stalled client.
            if len(batch) >= min(INGEST_BATCH, run.throttle.rate or INGEST_BATCH):
                ingest()
        if batch and not run.quota_message:
            ingest()
    finally:
        _unlink_all(batch)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    paths.clear()


def migration_study_retrieve(*, job: MigrationJob, study: MigrationStudy, run: _Run | None = None) -> None:
    """List, retrieve and verify one study of a migration (a step that can be repeated safely)."""
    clinic = job.clinic
    run = run or _Run(job=job, throttle=_Throttle(job.max_instances_per_second), quota_message=[])
    if job.is_dicomweb:
        listed = _dicomweb(job).study_instances(study_instance_uid=study.study_instance_uid)
    else:
        listed = scu.study_instances_find(clinic=clinic, node=_source_node(job), study_instance_uid=study.study_instance_uid)
    MigrationInstance.objects.bulk_create(
        [MigrationInstance(clinic=clinic, study=study, series_instance_uid=item.series_instance_uid[:64],
                           sop_instance_uid=item.sop_instance_uid[:64]) for item in listed],
        ignore_conflicts=True,
    )
    missing, retryable = _mark_present(study=study)
    if retryable and not run.quota_message:
        retrieve = _retrieve_dicomweb if job.is_dicomweb else _retrieve_dimse
        retrieve(run=run, study=study, listed=listed, missing=retryable)
        missing, retryable = _mark_present(study=study)
    present = MigrationInstance.objects.filter(study=study, is_present=True).count()
    state = MigrationStudy.State.VERIFIED if not missing else MigrationStudy.State.INCOMPLETE
    attempts = study.attempts + 1
    MigrationStudy.objects.filter(pk=study.pk).update(
        instances_listed=len(listed), instances_present=present, attempts=attempts,
        # Incomplete studies go back to pending until their attempts are used up, unless what is missing
        # was refused for the file itself: the source would send the same again.
        state=MigrationStudy.State.PENDING if retryable and attempts < MIGRATION_STUDY_ATTEMPTS else state,
    )
    if run.quota_message:
        raise _QuotaStop(run.quota_message[0])


def _migration_counters_save(job: MigrationJob, **extra: object) -> None:
    studies = MigrationStudy.objects.filter(job=job)
    totals = studies.aggregate(listed=Sum("instances_listed"), present=Sum("instances_present"))
    failed = studies.filter(state=MigrationStudy.State.INCOMPLETE).aggregate(
        listed=Sum("instances_listed"), present=Sum("instances_present"))
    MigrationJob.objects.filter(pk=job.pk).update(
        studies_total=studies.count(), instances_total=totals["listed"] or 0,
        instances_done=totals["present"] or 0,
        instances_failed=(failed["listed"] or 0) - (failed["present"] or 0),
        heartbeat_at=timezone.now(), **extra,
    )


def migration_run(*, job: MigrationJob, slice_seconds: float = MIGRATION_SLICE_SECONDS,
                  clock: Callable[[], float] = time.monotonic) -> bool:
    """Work on the migration for about ``slice_seconds``; return True when more work remains.

    Raises scu.NodeUnreachable when the node cannot be reached (the job stays running; retried later).
    """
    if not _claim(MigrationJob, job.pk):
        return False
    try:
        return _migration_slice(job=job, slice_seconds=slice_seconds, clock=clock)
    finally:
        _release(MigrationJob, job.pk)


def migration_next_slice_countdown(*, job: MigrationJob) -> float:
    """Seconds until the next slice of a job that has more to do: at once while studies wait for their first
    attempt; MIGRATION_RETRY_SECONDS when only retries are left; 5 minutes outside its time window."""
    if not migration_in_window(job=job):
        return 300
    first_attempts = MigrationStudy.objects.filter(job=job, state=MigrationStudy.State.PENDING, attempts=0)
    return 0 if first_attempts.exists() else MIGRATION_RETRY_SECONDS


def _migration_slice(*, job: MigrationJob, slice_seconds: float, clock: Callable[[], float]) -> bool:
    if not migration_in_window(job=job):
        return True
    try:
        return _migration_work(job=job, slice_seconds=slice_seconds, clock=clock)
    except dicomweb_source.SourceRefused as exc:
        # A wrong URL or wrong credentials stay wrong: stop with the source's answer instead of waiting.
        _migration_counters_save(job)
        _migration_stop(job, exc.message)
        return False


class _StudyQueue:
    """The slice's pending studies, each handed to exactly one association (so none is fetched twice)."""

    def __init__(self, studies: list[MigrationStudy], *, deadline: float, clock: Callable[[], float]) -> None:
        self._studies = list(reversed(studies))
        self._lock = threading.Lock()
        self.deadline = deadline
        self.clock = clock
        self.stop_reason = ""
        self.failure: BaseException | None = None

    def next(self, *, first: bool) -> MigrationStudy | None:
        """The next study, or None when the slice ends (an association's first study is always given:
        every slice makes progress, however short)."""
        with self._lock:
            if self.stop_reason or self.failure is not None or not self._studies:
                return None
            if not first and self.clock() >= self.deadline:
                return None
            return self._studies.pop()

    def stop(self, reason: str) -> None:
        with self._lock:
            self.stop_reason = self.stop_reason or reason

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self.failure = self.failure or exc


def _migration_association(*, run: _Run, queue: _StudyQueue) -> None:
    """One association's share of a slice: take a pending study, retrieve and verify it, record, repeat."""
    job = run.job
    first = True
    try:
        while True:
            paused = billing_selectors.upload_block_reason(clinic=job.clinic)
            if paused:
                queue.stop(paused)
                return
            study = queue.next(first=first)
            first = False
            if study is None:
                return
            try:
                migration_study_retrieve(job=job, study=study, run=run)
            except _QuotaStop as exc:
                queue.stop(exc.message)
                return
            finally:
                _migration_counters_save(job)
    except BaseException as exc:  # noqa: BLE001 - handed to the slice, which raises it after the join
        queue.fail(exc)


def _migration_work(*, job: MigrationJob, slice_seconds: float, clock: Callable[[], float]) -> bool:
    if not job.is_listed:
        migration_list_studies(job=job)
        job.refresh_from_db()
    pending = list(MigrationStudy.objects.filter(job=job, state=MigrationStudy.State.PENDING).order_by("pk"))
    queue = _StudyQueue(pending, deadline=clock() + slice_seconds, clock=clock)
    run = _Run(job=job, throttle=_Throttle(job.max_instances_per_second), quota_message=[])
    count = max(1, min(job.associations or 1, MIGRATION_ASSOCIATIONS_MAX, len(pending)))
    if count == 1:
        _migration_association(run=run, queue=queue)
    else:
        threads = [threading.Thread(target=_in_own_connection, args=(_migration_association,),
                                    kwargs={"run": run, "queue": queue}, name=f"migration-{job.pk}-{n}")
                   for n in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if queue.failure is not None:
        raise queue.failure
    if queue.stop_reason:
        _migration_counters_save(job)
        _migration_stop(job, queue.stop_reason)
        return False
    if MigrationStudy.objects.filter(job=job, state=MigrationStudy.State.PENDING).exists():
        return True
    _migration_finish(job)
    return False


def _in_own_connection(target: Callable[..., None], **kwargs: object) -> None:
    # Each association thread has its own database connection (Django's are per thread): close it after.
    try:
        target(**kwargs)
    finally:
        connection.close()


def _migration_stop(job: MigrationJob, message: str) -> None:
    MigrationJob.objects.filter(pk=job.pk).update(status=JobStatus.STOPPED, error=message[:300],
                                                  finished_at=timezone.now())
    audit_record(clinic=job.clinic, action="migration.stopped", actor_label=f"migration:{job.uuid}",
                 object_type="migration", object_id=str(job.uuid), result="failure",
                 details={"reason": message[:200]})


def _migration_finish(job: MigrationJob) -> None:
    _migration_counters_save(job)
    incomplete = MigrationStudy.objects.filter(job=job, state=MigrationStudy.State.INCOMPLETE).exists()
    MigrationJob.objects.filter(pk=job.pk).update(
        status=JobStatus.FAILED if incomplete else JobStatus.DONE, finished_at=timezone.now())
    job.refresh_from_db()
    audit_record(clinic=job.clinic, action="migration.finished", actor_label=f"migration:{job.uuid}",
                 object_type="migration", object_id=str(job.uuid),
                 result="success" if not incomplete else "failure",
                 details={"studies": job.studies_total, "instances": job.instances_done,
                          "missing": job.instances_failed})


def migration_report(*, job: MigrationJob) -> MigrationReport:
    studies = MigrationStudy.objects.filter(job=job)
    rows = list(MigrationInstance.objects.filter(study__job=job, is_present=False)
                .order_by("pk").values_list("sop_instance_uid", "refusal")[:MISSING_LISTED])
    missing = [uid for uid, _ in rows]
    refused = {uid: refusal for uid, refusal in rows if refusal}
    totals = studies.aggregate(listed=Sum("instances_listed"), present=Sum("instances_present"))
    return MigrationReport(
        studies_total=studies.count(),
        studies_verified=studies.filter(state=MigrationStudy.State.VERIFIED).count(),
        studies_incomplete=studies.filter(state=MigrationStudy.State.INCOMPLETE).count(),
        instances_listed=totals["listed"] or 0, instances_present=totals["present"] or 0, missing=missing,
        refused=refused,
    )


def migration_speed(*, job: MigrationJob) -> tuple[float | None, float | None]:
    """Return (instances per second so far, seconds left at that speed), when they can be told."""
    if not job.started_at or not job.instances_done:
        return None, None
    end = job.finished_at or timezone.now()
    elapsed = max((end - job.started_at).total_seconds(), 1.0)
    speed = job.instances_done / elapsed
    left = max(job.instances_total - job.instances_done - job.instances_failed, 0)
    return speed, (left / speed if speed and job.status == JobStatus.RUNNING else None)


# --- Routing ---------------------------------------------------------------------------------------


def routing_rule_create(
    *, clinic: Clinic, name: str, destinations: Iterable[DicomNode], calling_ae_title: str = "",
    modality: str = "", source: str = "", actor: User | None = None, by: Actor | None = None,
) -> RoutingRule:
    """Create a rule forwarding matching incoming instances to the destination nodes; audited."""
    nodes = [node for node in destinations if node.clinic_id == clinic.pk]
    if not nodes:
        raise OutboundError("Choose at least one destination node.")
    name = (name or "").strip()[:100]
    if not name:
        raise OutboundError("Give the rule a name.")
    with transaction.atomic():
        rule = RoutingRule.objects.create(clinic=clinic, name=name, calling_ae_title=calling_ae_title.strip()[:16],
                                          modality=modality.strip().upper()[:16], source=source.strip()[:16])
        rule.destinations.set(nodes)
        audit_record(clinic=clinic, action="routing_rule.created", by=by, actor=actor,
                     object_type="routing_rule", object_id=str(rule.uuid),
                     details={"destinations": [n.ae_title for n in nodes], "calling_ae_title": rule.calling_ae_title,
                              "modality": rule.modality, "source": rule.source})
    return rule


def routing_rule_delete(*, clinic: Clinic, rule: RoutingRule, actor: User | None = None,
                        by: Actor | None = None) -> None:
    if rule.clinic_id != clinic.pk:
        raise OutboundError("No such routing rule.")
    rule_uuid = str(rule.uuid)
    rule.delete()
    audit_record(clinic=clinic, action="routing_rule.deleted", by=by, actor=actor,
                 object_type="routing_rule", object_id=rule_uuid)


def route_deliveries_send(*, clinic: Clinic, node: DicomNode, now: datetime | None = None) -> int:
    """Send the node's due deliveries over one association; return how many were delivered.

    A node that cannot be reached, or refuses an instance, is tried again later with a growing delay;
    nothing is dropped until ROUTE_MAX_ATTEMPTS refusals (connection failures never drop a delivery).
    """
    now = now or timezone.now()
    due = list(RouteDelivery.objects.for_clinic(clinic).filter(node=node, state=RouteDelivery.State.PENDING,
                                                               next_attempt_at__lte=now)
               .select_related("instance").order_by("pk")[:ROUTE_BATCH])
    if not due:
        return 0
    by_instance = {d.instance_id: d for d in due}
    delivered = [0]

    def record(result: scu.StoreResult) -> None:
        delivery = by_instance[result.instance.pk]
        if result.is_success:
            RouteDelivery.objects.filter(pk=delivery.pk).update(state=RouteDelivery.State.DELIVERED,
                                                                delivered_at=timezone.now(), last_error="")
            delivered[0] += 1
            return
        attempts = delivery.attempts + 1
        RouteDelivery.objects.filter(pk=delivery.pk).update(
            attempts=attempts, last_error=(result.error or f"status 0x{result.status or 0:04X}")[:200],
            state=RouteDelivery.State.FAILED if attempts >= ROUTE_MAX_ATTEMPTS else RouteDelivery.State.PENDING,
            next_attempt_at=timezone.now() + _backoff(attempts),
        )

    try:
        scu.instances_store(clinic=clinic, node=node, instances=[d.instance for d in due], on_result=record)
    except scu.NodeUnreachable as exc:
        waiting = RouteDelivery.objects.filter(pk__in=[d.pk for d in due], state=RouteDelivery.State.PENDING,
                                               next_attempt_at__lte=now)
        for delivery in waiting:
            RouteDelivery.objects.filter(pk=delivery.pk).update(
                attempts=delivery.attempts + 1, last_error=str(exc)[:200],
                next_attempt_at=timezone.now() + _backoff(delivery.attempts + 1))
        logger.info("Routing: node %s of clinic %s unreachable; %d deliveries wait", node.uuid, clinic.pk,
                    len(due))
    return delivered[0]


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(3600, 15 * 2 ** min(attempts, 12)))


# --- Sweep -----------------------------------------------------------------------------------------


def outbound_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Re-queue what a dead worker or a lost message left: stale jobs and due routing deliveries.

    Runs across clinics (a maintenance task): each queued task is scoped to its own clinic.
    """
    now = now or timezone.now()
    # Neither held by a worker nor waiting in the queue (queued a while ago and never picked up).
    lost = Q(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]) & _unheld(now) & (
        Q(queued_at=None) | Q(queued_at__lt=now - _stale()))
    sends = list(SendJob.objects.filter(lost))
    for send in sends:
        job_enqueue(job=send)
    migrations = list(MigrationJob.objects.filter(lost))
    for migration in migrations:
        job_enqueue(job=migration)
    due_nodes = list(RouteDelivery.objects.filter(state=RouteDelivery.State.PENDING, next_attempt_at__lte=now)
                     .values_list("clinic_id", "node_id").distinct())
    for clinic_id, node_id in due_nodes:
        _enqueue("outbound.route_deliveries_send", clinic_id=clinic_id, node_id=node_id)
    return {"sends": len(sends), "migrations": len(migrations), "route_nodes": len(due_nodes)}


def route_delivery_counts(*, clinic: Clinic) -> dict[str, int]:
    """How many deliveries wait, were delivered and were refused for good, for the routing page."""
    rows = RouteDelivery.objects.for_clinic(clinic).values("state").annotate(n=Count("pk"))
    counts = {state: 0 for state in RouteDelivery.State.values}
    counts.update({row["state"]: row["n"] for row in rows})
    return counts

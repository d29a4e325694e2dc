"""Full clinic export for owners, built by a Celery worker from studies.backup.export's DICOMDIR writer.

The studies are cut into parts of at most CLINIC_EXPORT_PART_BYTES (a study is never split), each
written as plain DICOM files with a DICOMDIR and packed into a ZIP archive. Archives are stored
encrypted in the clinic's primary store like any object, downloaded through the portal by owners,
and deleted after CLINIC_EXPORT_KEEP_DAYS. Requesting, finishing and each download are audited.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import uuid
import zipfile
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TypedDict

from celery import current_app
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import F, Q, QuerySet, Sum
from django.template.loader import render_to_string
from django.utils import timezone

from portal.exceptions import Conflict
from studies.archive import objects
from studies.backup import export
from studies.exports.models import ClinicExport, ExportStatus
from studies.models import Study
from tenants.audit import Actor, audit_record
from tenants.models import Clinic, User

logger = logging.getLogger(__name__)

# Queued by name: studies.exports.tasks imports this module.
EXPORT_BUILD_TASK = "studies.exports.tasks.clinic_export_build"
# How often, at most, a build reports that it is alive (CLINIC_EXPORT_STALE_SECONDS is far longer).
HEARTBEAT_SECONDS = 60


def clinic_export_request(
    *, clinic: Clinic, requested_by: User, base_url: str = "", by: Actor | None = None
) -> ClinicExport:
    """Queue a full export of the clinic; the worker mails ``requested_by`` when it is ready.

    Raises Conflict while another export of the clinic is still being prepared.
    """
    with transaction.atomic():
        Clinic.objects.select_for_update().filter(pk=clinic.pk).first()
        if (
            ClinicExport.objects.for_clinic(clinic)
            .filter(status__in=[ExportStatus.QUEUED, ExportStatus.RUNNING])
            .exists()
        ):
            raise Conflict("An export of this clinic is already being prepared; you get an e-mail when it is ready.")
        job = ClinicExport.objects.create(clinic=clinic, requested_by=requested_by, base_url=base_url[:200])
        audit_record(
            clinic=clinic,
            action="export.requested",
            by=by,
            actor=requested_by,
            object_type="clinic_export",
            object_id=str(job.uuid),
        )
        transaction.on_commit(partial(current_app.tasks[EXPORT_BUILD_TASK].delay, clinic_id=clinic.pk, export_id=job.pk))
    return job



class ExportPart(TypedDict):
    """One ZIP of a clinic export, as ClinicExport.parts keeps it."""

    key: str
    size_bytes: int
    studies: int
    instances: int
    name: str


def export_parts_plan(*, clinic: Clinic, part_bytes: int) -> list[list[int]]:
    """Study ids grouped into parts of at most ``part_bytes`` each (a larger study is a part of its own)."""
    parts: list[list[int]] = []
    current: list[int] = []
    size = 0
    rows = Study.objects.for_clinic(clinic).filter(deleted_at=None).order_by("pk").values_list("pk", "size_bytes")
    for study_id, study_size in rows:
        if current and size + study_size > part_bytes:
            parts.append(current)
            current, size = [], 0
        current.append(study_id)
        size += study_size
    if current:
        parts.append(current)
    return parts


def _zip_folder(folder: Path, archive: Path) -> None:
    # Stored, not deflated: DICOM pixel data barely compresses and the worker's time is better spent elsewhere.
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())


def _workdir_prefix(job: ClinicExport) -> str:
    return f"clinic-export-{job.uuid}-"


def _stale_before() -> datetime:
    return timezone.now() - timedelta(seconds=settings.CLINIC_EXPORT_STALE_SECONDS)


def _lost_worker() -> Q:
    """A RUNNING export whose build has not reported for CLINIC_EXPORT_STALE_SECONDS: its worker is dead."""
    stale = _stale_before()
    return Q(status=ExportStatus.RUNNING) & (Q(heartbeat_at__lt=stale) | Q(heartbeat_at=None, created_at__lt=stale))


def clinic_export_claim(*, clinic_id: int, export_id: int) -> ClinicExport | None:
    """Claim an export for this build: a queued one, or a running one whose worker was lost; None if neither.

    Taking over a lost build deletes the parts it had stored (their ZIPs are rebuilt from the start).
    """
    with transaction.atomic():
        job = (
            ClinicExport.objects.for_clinic(clinic_id).select_for_update()
            .filter(Q(status=ExportStatus.QUEUED) | _lost_worker(), pk=export_id).first()
        )
        if job is None:
            return None
        orphans = [str(part["key"]) for part in job.parts]
        ClinicExport.objects.filter(pk=job.pk).update(
            status=ExportStatus.RUNNING, heartbeat_at=timezone.now(), attempt=F("attempt") + 1, parts=[],
            studies_done=0,
        )
    for key in orphans:
        objects.object_delete(clinic=job.clinic, key=key)
    # A killed build left its plain DICOM files behind; on this machine they go now (on another, they stay in
    # that worker's private temporary folder until it is cleaned).
    for leftover in Path(tempfile.gettempdir()).glob(f"{_workdir_prefix(job)}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if orphans:
        logger.warning("Export %s of clinic %s: its worker was lost; built again", job.uuid, clinic_id)
    return ClinicExport.objects.select_related("clinic", "requested_by").get(pk=job.pk)


def clinic_exports_resume() -> int:
    """Queue a build again for every export whose worker was lost (beat runs this every 5 minutes)."""
    lost = list(ClinicExport.objects.filter(_lost_worker()).values_list("clinic_id", "pk"))
    for clinic_id, export_id in lost:
        current_app.tasks[EXPORT_BUILD_TASK].delay(clinic_id=clinic_id, export_id=export_id)
    return len(lost)


class _Heartbeat:
    """Reports the build as alive, at most once a minute, while it is still the export's latest build."""

    def __init__(self, job: ClinicExport) -> None:
        self.mine = ClinicExport.objects.filter(pk=job.pk, attempt=job.attempt, status=ExportStatus.RUNNING)
        self.last = time.monotonic()

    def __call__(self, message: str = "") -> None:
        if time.monotonic() - self.last >= HEARTBEAT_SECONDS:
            self.beat()

    def beat(self, **fields: object) -> None:
        """Report now (with ``fields`` updated too); raise BuildSuperseded if another build took the export."""
        self.last = time.monotonic()
        if not self.mine.update(heartbeat_at=timezone.now(), **fields):
            raise BuildSuperseded()


class BuildSuperseded(Exception):
    """This build was taken for dead and another one claimed the export: it stops, and keeps nothing."""


def clinic_export_build(*, job: ClinicExport) -> ClinicExport:
    """Write every part of a claimed export, store it encrypted, and mail the requester.

    Raises BuildSuperseded, having deleted what it stored, when another build claimed the export meanwhile.
    """
    clinic = job.clinic
    plan = export_parts_plan(clinic=clinic, part_bytes=settings.CLINIC_EXPORT_PART_BYTES)
    heartbeat = _Heartbeat(job)
    heartbeat.beat(studies_total=sum(len(p) for p in plan))
    parts: list[ExportPart] = []
    workdir = Path(tempfile.mkdtemp(prefix=_workdir_prefix(job)))
    try:
        for number, study_ids in enumerate(plan, start=1):
            folder = workdir / f"part-{number}"
            report = export.clinic_export(clinic=clinic, target=folder, study_ids=study_ids, progress=heartbeat)
            archive = workdir / f"part-{number}.zip"
            _zip_folder(folder, archive)
            shutil.rmtree(folder, ignore_errors=True)
            with archive.open("rb") as source:
                stored = objects.object_put(clinic=clinic, source=source, object_uuid=uuid.uuid4())
            archive.unlink()
            parts.append(
                {
                    "key": stored.key,
                    "size_bytes": stored.size_bytes,
                    "studies": report.studies,
                    "instances": report.instances,
                    "name": f"{clinic.slug}-export-{job.created_at:%Y%m%d}-part-{number}-of-{len(plan)}.zip",
                }
            )
            heartbeat.beat(studies_done=sum(p["studies"] for p in parts), parts=parts)
        now = timezone.now()
        heartbeat.beat(
            status=ExportStatus.DONE,
            parts=parts,
            finished_at=now,
            expires_at=now + timedelta(days=settings.CLINIC_EXPORT_KEEP_DAYS),
        )
    except BaseException:
        for part in parts:
            objects.object_delete(clinic=clinic, key=str(part["key"]))
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    job.refresh_from_db()
    audit_record(
        clinic=clinic,
        action="export.finished",
        object_type="clinic_export",
        object_id=str(job.uuid),
        details={"parts": len(parts), "studies": job.studies_done},
    )
    _mail_ready(job=job)
    return job


def clinic_export_fail(*, job: ClinicExport, reason: str) -> None:
    failed = ClinicExport.objects.filter(pk=job.pk, attempt=job.attempt, status=ExportStatus.RUNNING).update(
        status=ExportStatus.FAILED, error=reason[:500], finished_at=timezone.now()
    )
    if not failed:  # another build has the export now: its outcome is the one that counts
        return
    audit_record(
        clinic=job.clinic,
        action="export.failed",
        object_type="clinic_export",
        object_id=str(job.uuid),
        result="failure",
    )


def _mail_ready(*, job: ClinicExport) -> None:
    if job.requested_by is None:
        return
    url = job.base_url.rstrip("/") + f"/c/{job.clinic.slug}/exports/{job.uuid}/"
    body = render_to_string(
        "emails/clinic_export_ready.txt",
        {
            "job": job,
            "clinic": job.clinic,
            "url": url,
            "keep_days": settings.CLINIC_EXPORT_KEEP_DAYS,
            "total_bytes": sum(int(p["size_bytes"]) for p in job.parts),
        },
    )
    subject, _, text = body.partition("\n")
    send_mail(subject.strip(), text.strip() + "\n", settings.DEFAULT_FROM_EMAIL, [job.requested_by.email])


def clinic_export_downloadable(*, clinic: Clinic) -> QuerySet[ClinicExport]:
    """The clinic's exports whose parts may be downloaded now: done and not past their keeping time.

    The hourly sweep deletes the archives later; until it runs, an expired link must already stop working.
    """
    return ClinicExport.objects.for_clinic(clinic).filter(status=ExportStatus.DONE, expires_at__gt=timezone.now())


def clinic_export_part_downloaded(*, job: ClinicExport, number: int, by: Actor) -> None:
    audit_record(
        clinic=job.clinic,
        action="export.downloaded",
        by=by,
        object_type="clinic_export",
        object_id=str(job.uuid),
        details={"part": number},
    )


def clinic_exports_expire() -> int:
    """Delete the archives of exports past their keeping time; returns how many exports expired."""
    # Across clinics on purpose: a periodic maintenance sweep.
    expired = 0
    for job in ClinicExport.objects.filter(status=ExportStatus.DONE, expires_at__lt=timezone.now()).select_related(
        "clinic"
    ):
        for part in job.parts:
            objects.object_delete(clinic=job.clinic, key=str(part["key"]))
        ClinicExport.objects.filter(pk=job.pk).update(status=ExportStatus.EXPIRED, parts=[])
        expired += 1
    return expired


def clinic_export_size_estimate(*, clinic: Clinic) -> int:
    return Study.objects.for_clinic(clinic).filter(deleted_at=None).aggregate(total=Sum("size_bytes"))["total"] or 0

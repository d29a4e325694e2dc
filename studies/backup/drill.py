"""Scheduled restore tests: restore a sample of studies and the latest database backup, and check them.

``verify_backups`` proves each replica copy decrypts to the indexed digest. A restore test goes the
whole way a disaster would: it writes a sample of each clinic's studies from the replica into a scratch
folder as plain DICOM files, checks their digests and parses them, and restores the newest database
backup into the scratch folder too (SQLite: decrypt and check the snapshot; PostgreSQL: ``pgbackrest
verify`` of the repository). The result is a ``RestoreDrill`` row per clinic that the backup page shows.
Nothing outside the scratch folder is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from studies.archive import objects
from studies.archive.errors import ArchiveError
from studies.backup import database, pgbackrest
from studies.dicom import parse_instance
from studies.errors import InvalidDicom
from studies.models import Instance, RestoreDrill, Study
from tenants.models import Clinic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatabaseRestoreCheck:
    ok: bool
    restored: str  # the snapshot or backup set checked
    problem: str = ""


def database_restore_check(*, scratch: Path) -> DatabaseRestoreCheck:
    """Restore the latest database backup into ``scratch`` (or verify the pgBackRest repository)."""
    try:
        if database.database_engine() == "sqlite":
            snapshot = database.database_snapshot_pick()
            database.database_snapshot_check(snapshot, folder=scratch)
            return DatabaseRestoreCheck(True, snapshot.snapshot_id)
        pgbackrest.config_write()
        pgbackrest.run("verify")
        return DatabaseRestoreCheck(True, "pgBackRest repository")
    except ArchiveError as exc:
        return DatabaseRestoreCheck(False, "", exc.message)


def _restore_instance(*, clinic: Clinic, instance: Instance, folder: Path) -> str:
    """Write one instance from the replica into ``folder``; return a problem, or "" when it is sound."""
    target = folder / f"{instance.uuid}.dcm"
    digest = hashlib.sha256()
    try:
        with contextlib.closing(objects.object_open(clinic=clinic, key=instance.object_key, store="replica")) as stream, \
                target.open("wb") as out:
            while chunk := stream.read(1024 * 1024):
                digest.update(chunk)
                out.write(chunk)
    except (ArchiveError, ValueError) as exc:
        return f"instance {instance.uuid}: {exc}"
    if digest.hexdigest() != instance.sha256:
        return f"instance {instance.uuid}: the restored file is not the stored one"
    try:
        parsed = parse_instance(str(target))
    except InvalidDicom:
        return f"instance {instance.uuid}: the restored file is not DICOM"
    if parsed.sop_instance_uid != instance.sop_instance_uid:
        return f"instance {instance.uuid}: the restored file is another instance"
    return ""


def clinic_restore_drill(
    *, clinic: Clinic, database_check: DatabaseRestoreCheck, scratch: Path, sample: int, source: str = "schedule"
) -> RestoreDrill:
    """Restore ``sample`` random live studies of the clinic into ``scratch``; record the result."""
    drill = RestoreDrill.objects.create(clinic=clinic, source=source, database_snapshot=database_check.restored)
    problems: list[str] = [] if database_check.ok else [f"database: {database_check.problem}"]
    study_ids = list(
        Study.objects.for_clinic(clinic).filter(deleted_at__isnull=True, number_of_instances__gt=0)
        .values_list("pk", flat=True)
    )
    chosen = random.sample(study_ids, min(sample, len(study_ids)))
    folder = scratch / str(clinic.uuid)
    folder.mkdir(parents=True, exist_ok=True)
    instances = 0
    for instance in Instance.objects.for_clinic(clinic).filter(series__study_id__in=chosen).order_by("pk"):
        problem = _restore_instance(clinic=clinic, instance=instance, folder=folder)
        instances += 1
        if problem:
            problems.append(problem)
    drill.studies_checked = len(chosen)
    drill.instances_checked = instances
    drill.problems = problems[:50]
    drill.passed = not problems
    drill.finished_at = timezone.now()
    drill.save()
    if problems:
        logger.error("restore test of clinic %s failed: %s", clinic.uuid, "; ".join(problems[:5]))
    return drill


def restore_drill_run(*, clinic: Clinic | None = None, sample: int | None = None, source: str = "schedule",
                      database_check: DatabaseRestoreCheck | None = None) -> list[RestoreDrill]:
    """Run the restore test for one clinic or all; the scratch folder is removed afterwards.

    ``database_check`` is the result of an earlier database restore check (by default one is run).
    """
    sample = settings.RESTORE_DRILL_SAMPLE_STUDIES if sample is None else sample
    scratch = Path(tempfile.mkdtemp(prefix="restore-drill-"))
    try:
        database_check = database_check or database_restore_check(scratch=scratch)
        # Unscoped when no clinic is given: the scheduled drill covers every clinic.
        clinics = [clinic] if clinic is not None else list(Clinic.objects.order_by("pk"))
        return [
            clinic_restore_drill(clinic=target, database_check=database_check, scratch=scratch, sample=sample,
                                 source=source)
            for target in clinics
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def restore_drill_due() -> bool:
    """Whether the last scheduled drill is older than RESTORE_DRILL_INTERVAL_DAYS."""
    # Unscoped: one schedule for the whole service.
    last = RestoreDrill.objects.order_by("-started_at").values_list("started_at", flat=True).first()
    return last is None or timezone.now() - last >= timedelta(days=settings.RESTORE_DRILL_INTERVAL_DAYS)


def restore_drill_latest(*, clinic: Clinic) -> RestoreDrill | None:
    return RestoreDrill.objects.for_clinic(clinic).filter(finished_at__isnull=False).order_by("-started_at").first()

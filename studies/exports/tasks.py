"""Celery entry points of clinic exports; ``studies.exports.services`` queues them by name."""

from __future__ import annotations

import logging

from celery import shared_task

from studies.exports import services
from studies.exports.models import ClinicExport, ExportStatus

logger = logging.getLogger(__name__)


@shared_task(name=services.EXPORT_BUILD_TASK, acks_late=True)
def clinic_export_build(*, clinic_id: int, export_id: int) -> str:
    """Build one export; a redelivered message finds it claimed (or done) and does nothing."""
    claimed = (
        ClinicExport.objects.for_clinic(clinic_id)
        .filter(pk=export_id, status=ExportStatus.QUEUED)
        .update(status=ExportStatus.RUNNING)
    )
    if not claimed:
        return "skipped"
    job = ClinicExport.objects.for_clinic(clinic_id).select_related("clinic", "requested_by").get(pk=export_id)
    try:
        services.clinic_export_build(job=job)
    except Exception:
        logger.exception("Export %s of clinic %s failed", job.uuid, clinic_id)
        services.clinic_export_fail(
            job=job, reason="The export could not be completed; ask again, or tell your operator."
        )
        raise
    return "done"


@shared_task(name="studies.exports.tasks.clinic_exports_expire")
def clinic_exports_expire() -> int:
    return services.clinic_exports_expire()

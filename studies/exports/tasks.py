"""Celery entry points of clinic exports; ``studies.exports.services`` queues them by name."""

from __future__ import annotations

import logging

from celery import shared_task

from studies.exports import services

logger = logging.getLogger(__name__)


@shared_task(name=services.EXPORT_BUILD_TASK, acks_late=True)
def clinic_export_build(*, clinic_id: int, export_id: int) -> str:
    """Build one export; a redelivered message finds it claimed by a live build (or done) and does nothing.

    One whose build lost its worker is claimed again and built from the start (``clinic_exports_resume``).
    """
    job = services.clinic_export_claim(clinic_id=clinic_id, export_id=export_id)
    if job is None:
        return "skipped"
    try:
        services.clinic_export_build(job=job)
    except services.BuildSuperseded:
        logger.warning("Export %s of clinic %s: another build took it over; this one stopped", job.uuid, clinic_id)
        return "superseded"
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


@shared_task(name="studies.exports.tasks.clinic_exports_resume")
def clinic_exports_resume() -> int:
    return services.clinic_exports_resume()

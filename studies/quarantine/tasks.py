"""Celery entry points of quarantine: a held instance's object copied to the replica, and the notice to the
clinic's owners and admins. Queued by name from ``studies.admission`` (which ingest calls) and from the
intake sweep; the names are the ones these tasks had in the ``studies.tasks`` hub, so messages already
queued still resolve.
"""

from __future__ import annotations

from celery import shared_task

from studies.archive.errors import ObjectMissing, StorageUnavailable
from studies.models import QuarantinedInstance
from studies.quarantine import services
from tenants.models import Clinic


@shared_task(name="studies.tasks.quarantined_replicate", acks_late=True, bind=True, max_retries=10)
def quarantined_replicate(self, clinic_id: int, held_id: int) -> bool:
    """Copy one quarantined instance's object to the replica."""
    held = QuarantinedInstance.objects.for_clinic(clinic_id).filter(pk=held_id).first()
    if held is None:
        return False
    try:
        return services.quarantined_replicate(held=held)
    except ObjectMissing:
        return False  # discarded meanwhile
    except StorageUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(600, 10 * 2**self.request.retries)) from exc


@shared_task(name="studies.tasks.quarantine_notify", acks_late=True, ignore_result=True)
def quarantine_notify(clinic_id: int) -> bool:
    """Tell the clinic's owners and admins that instances are held for review (rate-limited)."""
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    return clinic is not None and services.quarantine_notify(clinic=clinic)

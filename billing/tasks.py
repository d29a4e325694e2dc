"""Celery entry points for billing."""

from __future__ import annotations

from celery import shared_task

from billing import services
from portal.exceptions import Transient
from tenants.models import Clinic


@shared_task
def billing_enforce() -> None:
    services.billing_enforce()


@shared_task(acks_late=True, ignore_result=True)
def usage_reconcile() -> int:
    """Periodic (beat): correct drift between each clinic's used_bytes and its index."""
    return services.usage_reconcile_all()


@shared_task
def usage_warnings_check(*, clinic_id: int) -> None:
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is not None:
        services.usage_warnings_check(clinic=clinic)


@shared_task(acks_late=True, bind=True, max_retries=8)
def clinic_data_destroy(self, *, clinic_id: int) -> None:
    """Destroy a canceled clinic's data (routed to the replica-admin worker)."""
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is None:
        return
    try:
        services.clinic_data_destroy(clinic=clinic)
    except Transient as exc:  # a store unreachable (studies.archive.errors.StorageUnavailable)
        raise self.retry(exc=exc, countdown=min(3600, 60 * 2**self.request.retries)) from exc

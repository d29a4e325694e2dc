"""Celery entry points for billing."""

from __future__ import annotations

from celery import shared_task

from billing import services
from tenants.models import Clinic


@shared_task
def billing_enforce() -> None:
    services.billing_enforce()


@shared_task
def usage_warnings_check(*, clinic_id: int) -> None:
    clinic = Clinic.objects.filter(pk=clinic_id).first()
    if clinic is not None:
        services.usage_warnings_check(clinic=clinic)

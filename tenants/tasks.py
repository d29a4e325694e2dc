"""Celery entry points of the tenants app."""

from __future__ import annotations

from celery import shared_task

from tenants import audit


@shared_task(acks_late=True)
def audit_chains_check() -> int:
    """Check every audit chain (see tenants.audit.audit_chains_check); returns how many breaks were found."""
    return len(audit.audit_chains_check().problems)

"""Celery entry points of the tenants app."""

from __future__ import annotations

from celery import shared_task

from tenants import audit
from tenants.forms import PortalPasswordResetForm


@shared_task(acks_late=True)
def audit_chains_check() -> int:
    """Check every audit chain (see tenants.audit.audit_chains_check); returns how many breaks were found."""
    return len(audit.audit_chains_check().problems)


@shared_task(acks_late=True)
def password_reset_mail(*, email: str, base_url: str) -> None:
    """Mail the reset link that a request for this address asked for, if it has an active account."""
    form = PortalPasswordResetForm({"email": email})
    if form.is_valid():
        form.links_mail(base_url=base_url)

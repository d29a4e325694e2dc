"""Backup alerts: e-mails to a clinic's owners and admins and to the operators, rate-limited per kind.

Kinds: ``replica_unreachable`` (a synchronous copy or verification could not reach the replica),
``verification_failed`` (a replica copy did not decrypt to the indexed content) and ``replication_lag``
(something has waited longer than ``BACKUP_LAG_ALERT_SECONDS`` to be replicated). The same conditions
turn ``/readyz`` degraded through ``backup_problems``. Messages carry counts and ages only, never
patient data.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Count, Min
from django.utils import timezone

from studies.models import BackupAlert, Instance
from tenants.models import Clinic, Membership
from tenants.roles import Role

logger = logging.getLogger(__name__)


def alert_recipients(*, clinic: Clinic | None) -> list[str]:
    emails: list[str] = []
    if clinic is not None:
        emails = list(
            Membership.objects.for_clinic(clinic)
            .filter(role__in=[Role.OWNER, Role.ADMIN], user__is_active=True)
            .values_list("user__email", flat=True)
        )
    for email in settings.OPERATOR_EMAILS:
        if email not in emails:
            emails.append(email)
    return emails


def alert_send(*, clinic: Clinic | None, kind: str, subject: str, body: str) -> bool:
    """E-mail an alert unless the same kind went out for this clinic within BACKUP_ALERT_INTERVAL_MINUTES."""
    now = timezone.now()
    interval = timedelta(minutes=settings.BACKUP_ALERT_INTERVAL_MINUTES)
    with transaction.atomic():
        alert = BackupAlert.objects.select_for_update().filter(clinic=clinic, kind=kind).first()
        if alert is None:
            try:
                with transaction.atomic():
                    BackupAlert.objects.create(clinic=clinic, kind=kind, last_sent_at=now, last_message=subject)
            except IntegrityError:
                return False  # another process created it (and sent) just now
        elif alert.last_sent_at > now - interval:
            return False
        else:
            alert.last_sent_at = now
            alert.last_message = subject
            alert.save(update_fields=["last_sent_at", "last_message"])
    recipients = alert_recipients(clinic=clinic)
    if not recipients:
        logger.error("Backup alert with nobody to tell: %s", subject)
        return False
    name = clinic.name if clinic is not None else "all clinics"
    send_mail(f"[PACS backup] {subject} ({name})", body, None, recipients, fail_silently=True)
    logger.warning("Backup alert sent (%s, %s): %s", kind, name, subject)
    return True


def replica_unreachable_alert(*, clinic: Clinic, error: str) -> bool:
    return alert_send(
        clinic=clinic,
        kind="replica_unreachable",
        subject="The backup store cannot be reached",
        body=(
            "New images are stored safely on primary storage, but could not be copied to the backup store.\n"
            "They stay marked as pending and are copied automatically as soon as the backup store answers.\n\n"
            f"Error: {error[:300]}\n"
        ),
    )


def verification_failed_alert(*, clinic: Clinic, count: int) -> bool:
    return alert_send(
        clinic=clinic,
        kind="verification_failed",
        subject=f"{count} backup copies failed verification",
        body=(
            f"{count} backup copies could not be read back, or did not match the original.\n"
            "Each has been rewritten from the verified primary copy where possible; the next verification\n"
            "run will check them again. The backup page shows the current state.\n"
        ),
    )


def lag_alert(*, clinic: Clinic, pending: int, oldest_seconds: int) -> bool:
    return alert_send(
        clinic=clinic,
        kind="replication_lag",
        subject=f"{pending} images waiting for backup, the oldest for {oldest_seconds // 60} minutes",
        body=(
            f"{pending} images have not yet been copied to the backup store; the oldest has waited "
            f"{oldest_seconds} seconds.\nCheck that the Celery worker is running and the backup store is "
            "reachable.\n"
        ),
    )


def lagging_clinics(*, threshold_seconds: int | None = None) -> list[tuple[Clinic, int, int]]:
    """(clinic, pending count, oldest pending age in seconds) for clinics lagging past the threshold."""
    threshold = threshold_seconds if threshold_seconds is not None else settings.BACKUP_LAG_ALERT_SECONDS
    now = timezone.now()
    cutoff = now - timedelta(seconds=threshold)
    # Cross-clinic maintenance query: one row per lagging clinic.
    rows = (
        Instance.objects.filter(replicated_at=None)
        .values("clinic_id")
        .annotate(oldest=Min("stored_at"), pending=Count("pk"))
        .filter(oldest__lte=cutoff)
    )
    clinics = Clinic.objects.in_bulk([row["clinic_id"] for row in rows])
    return [
        (clinics[row["clinic_id"]], row["pending"], int((now - row["oldest"]).total_seconds()))
        for row in rows
        if row["clinic_id"] in clinics
    ]


def backup_health_check() -> int:
    """Alert every clinic whose replication lags; returns how many clinics lag. Run by the sweep."""
    lagging = lagging_clinics()
    for clinic, pending, oldest in lagging:
        lag_alert(clinic=clinic, pending=pending, oldest_seconds=oldest)
    return len(lagging)


def backup_problems() -> dict[str, str]:
    """What makes /readyz degraded: replication lag past the threshold, and failed verifications."""
    problems: dict[str, str] = {}
    lagging = lagging_clinics()
    if lagging:
        oldest = max(age for _, _, age in lagging)
        pending = sum(count for _, count, _ in lagging)
        problems["replication_lag"] = f"{pending} instances pending in {len(lagging)} clinics, oldest {oldest}s"
    # Cross-clinic maintenance query: any failed verification anywhere.
    failed = Instance.objects.filter(replica_verify_failed_at__isnull=False).count()
    if failed:
        problems["backup_verification"] = f"{failed} replica copies failed verification"
    return problems

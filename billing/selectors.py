"""Reads for billing: the clinic's plan and usage, and whether uploads are allowed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django.db.models import QuerySet, Sum
from django.db.models.functions import TruncMonth
from django.utils import timezone

from billing.models import Plan, Subscription, SubscriptionStatus
from portal import prepared
from studies.models import Instance
from tenants.models import Clinic


@dataclass(frozen=True)
class Usage:
    used_bytes: int
    quota_bytes: int
    plan: Plan | None

    @property
    def percent(self) -> float:
        return 100.0 * self.used_bytes / self.quota_bytes if self.quota_bytes else 100.0

    @property
    def free_bytes(self) -> int:
        return max(self.quota_bytes - self.used_bytes, 0)


def plan_list() -> list[Plan]:
    return list(Plan.objects.filter(is_active=True))


def subscription_get(*, clinic: Clinic) -> Subscription | None:
    return Subscription.objects.for_clinic(clinic).select_related("plan", "pending_plan").first()


def usage_get(*, clinic: Clinic) -> Usage:
    fresh = Clinic.objects.only("used_bytes", "quota_bytes").get(pk=clinic.pk)
    subscription = subscription_get(clinic=clinic)
    return Usage(fresh.used_bytes, fresh.quota_bytes, subscription.plan if subscription else None)


def usage_by_modality(*, clinic: Clinic) -> list[tuple[str, int]]:
    """Stored bytes per modality: aggregates only, so billing admins see no patient data."""
    rows = (
        Instance.objects.for_clinic(clinic)
        .values("series__modality")
        .annotate(total=Sum("size_bytes"))
        .order_by("-total")
    )
    return [(row["series__modality"] or "other", row["total"] or 0) for row in rows]


def usage_by_month(*, clinic: Clinic) -> list[tuple[date, int]]:
    """Bytes stored per calendar month of arrival."""
    rows = (
        Instance.objects.for_clinic(clinic)
        .annotate(month=TruncMonth("stored_at"))
        .values("month")
        .annotate(total=Sum("size_bytes"))
        .order_by("month")
    )
    return [(row["month"].date() if hasattr(row["month"], "date") else row["month"], row["total"] or 0) for row in rows]


def _upload_state_rows(*, clinic_id: int) -> QuerySet:
    return Subscription.objects.filter(clinic_id=clinic_id).values("status", "grace_ends_at", "trial_ends_at")


def upload_block_reason(*, clinic: Clinic) -> str | None:
    """Say why the clinic may not upload now (payment, cancellation, trial), or None when it may.

    Reading, sharing and export are never blocked here: only new uploads.
    """
    # Asked for every batch of every way in: only the three fields it needs, by a statement compiled once
    # (building and reading the whole subscription with its two plans was one of a batch's costliest reads).
    rows = prepared.rows("billing.upload_block_reason", _upload_state_rows, clinic_id=clinic.pk)
    if not rows:
        return None
    status, grace_ends_at, trial_ends_at = rows[0]["status"], rows[0]["grace_ends_at"], rows[0]["trial_ends_at"]
    now = timezone.now()
    if status in {SubscriptionStatus.CANCELED, SubscriptionStatus.DESTROYED}:
        return "The clinic's subscription is canceled: uploads are off. Reading and export keep working."
    if status == SubscriptionStatus.PAST_DUE and grace_ends_at and grace_ends_at <= now:
        return (
            "A payment failed and the 14-day grace period has ended: uploads are paused until the invoice is paid. "
            "Reading, sharing and export keep working."
        )
    if status == SubscriptionStatus.TRIALING and trial_ends_at and trial_ends_at <= now:
        return "The free trial has ended: choose a plan on the billing page to keep uploading."
    return None

"""Plans (data an operator edits), each clinic's subscription, and the Stripe events already handled."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from billing.plans import GB
from tenants.models import Clinic, ClinicQuerySet


class Plan(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    code = models.SlugField(max_length=32, unique=True)
    name = models.CharField(max_length=64)
    storage_bytes = models.BigIntegerField()
    price_cents = models.PositiveIntegerField(help_text="Monthly price in cents.")
    currency = models.CharField(max_length=3, default="usd")
    stripe_price_id = models.CharField(max_length=64, blank=True)
    is_active = models.BooleanField(default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "storage_bytes"]

    def __str__(self) -> str:
        return self.name

    @property
    def storage_gb(self) -> int:
        return self.storage_bytes // GB

    @property
    def price(self) -> str:
        return f"{self.price_cents // 100}.{self.price_cents % 100:02d}"


class SubscriptionStatus(models.TextChoices):
    TRIALING = "trialing", "Trial"
    ACTIVE = "active", "Active"
    PAST_DUE = "past_due", "Payment failed"
    CANCELED = "canceled", "Canceled"
    DESTROYED = "destroyed", "Data destroyed"


class Subscription(models.Model):
    """A clinic's plan and payment state; Stripe's webhooks drive it, or plan changes in test mode."""

    clinic = models.OneToOneField(Clinic, on_delete=models.CASCADE, related_name="subscription")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.TRIALING)
    trial_ends_at = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    stripe_subscription_id = models.CharField(max_length=64, blank=True, db_index=True)
    # Set when a payment fails; uploads stop once it has passed.
    grace_ends_at = models.DateTimeField(null=True, blank=True)
    # Set on cancellation; the clinic's data is destroyed once it has passed.
    read_only_until = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)
    # A downgrade waiting for usage to fit under the smaller plan.
    pending_plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Stripe's `created` of the newest event applied, so that an older event never rolls state back.
    last_event_at = models.BigIntegerField(default=0)
    # The highest usage warning already e-mailed (0, 80, 95), reset when usage drops below it.
    usage_warning_level = models.PositiveSmallIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = ClinicQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.clinic} on {self.plan} ({self.status})"


class StripeEvent(models.Model):
    """A Stripe event already received; the unique id makes a redelivery a no-op."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=128)
    created = models.BigIntegerField()
    received_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"

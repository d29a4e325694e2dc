"""Billing workflows: trials, plan changes, cancellation, Stripe events, usage warnings, data destruction."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from billing import selectors, stripe_api
from billing.models import Plan, StripeEvent, Subscription, SubscriptionStatus
from portal.exceptions import PortalError
from studies import erasure as study_erasure
from studies import ingest as study_ingest
from tenants.audit import Actor, audit_record
from tenants.models import Clinic, Membership, User
from tenants.roles import Role

logger = logging.getLogger(__name__)

USAGE_WARNING_LEVELS = (95, 80)


def _format_gb(size: int) -> str:
    return f"{size / 1000**3:,.1f} GB"


def _notify(*, clinic: Clinic, roles: tuple[str, ...], template: str, context: dict[str, Any]) -> None:
    recipients = list(
        Membership.objects.for_clinic(clinic).filter(role__in=roles).values_list("user__email", flat=True)
    )
    if not recipients:
        return
    body = render_to_string(f"emails/{template}.txt", {"clinic": clinic, **context})
    subject, _, text = body.partition("\n")
    send_mail(subject.strip(), text.strip(), settings.DEFAULT_FROM_EMAIL, recipients)


def _apply_plan(subscription: Subscription, plan: Plan) -> None:
    """Point the subscription at a plan and the clinic's quota at the plan's storage."""
    subscription.plan = plan
    subscription.pending_plan = None
    Clinic.objects.filter(pk=subscription.clinic_id).update(quota_bytes=plan.storage_bytes)


@transaction.atomic
def subscription_start_trial(*, clinic: Clinic) -> Subscription:
    """Start a new clinic on the trial plan (Starter by default) for BILLING_TRIAL_DAYS.

    Run by ``tenants.services.clinic_create`` for every new clinic (registered in ``BillingConfig.ready``).
    """
    existing = Subscription.objects.for_clinic(clinic).first()
    if existing is not None:
        return existing
    plan = Plan.objects.filter(code=settings.BILLING_TRIAL_PLAN).first() or Plan.objects.filter(is_active=True).first()
    if plan is None:
        raise PortalError("No plan is defined; an operator must add plans first.")
    subscription = Subscription(
        clinic=clinic,
        plan=plan,
        status=SubscriptionStatus.TRIALING,
        trial_ends_at=timezone.now() + timedelta(days=settings.BILLING_TRIAL_DAYS),
    )
    _apply_plan(subscription, plan)
    subscription.save()
    return subscription


@dataclass(frozen=True)
class PlanChange:
    """The result of asking for another plan: applied now, or a Stripe page to visit."""

    applied: bool
    redirect_url: str = ""
    message: str = ""


def _check_fits(*, clinic: Clinic, plan: Plan) -> None:
    usage = selectors.usage_get(clinic=clinic)
    if usage.used_bytes > plan.storage_bytes:
        raise PortalError(
            f"The clinic stores {_format_gb(usage.used_bytes)}, more than the {plan.name} plan's "
            f"{_format_gb(plan.storage_bytes)}. Delete studies (and empty the trash) until usage fits, or "
            f"schedule the change to take effect once it does."
        )


@transaction.atomic
def plan_change(
    *,
    clinic: Clinic,
    plan: Plan,
    user: User,
    success_url: str = "",
    cancel_url: str = "",
    when_usage_fits: bool = False,
    by: Actor | None = None,
) -> PlanChange:
    """Move the clinic to another plan.

    A downgrade below current usage is refused with an explanation, or, with ``when_usage_fits``,
    scheduled until usage fits. Without Stripe keys the change applies at once (test mode); with them,
    a new subscription goes through Stripe Checkout and an existing one is re-priced, confirmed by webhook.
    """
    subscription = Subscription.objects.select_for_update().select_related("plan").get(clinic=clinic)
    if subscription.status == SubscriptionStatus.DESTROYED:
        raise PortalError("This clinic's data has been destroyed; its subscription cannot be changed.")
    if plan.pk == subscription.plan_id and subscription.status == SubscriptionStatus.ACTIVE:
        return PlanChange(applied=True, message=f"The clinic is already on the {plan.name} plan.")
    try:
        _check_fits(clinic=clinic, plan=plan)
    except PortalError:
        if not when_usage_fits:
            raise
        subscription.pending_plan = plan
        subscription.save(update_fields=["pending_plan", "updated_at"])
        audit_record(clinic=clinic, action="billing.plan_change_scheduled", by=by, actor=user,
                     object_type="plan", object_id=plan.code)
        return PlanChange(applied=False, message=f"The switch to {plan.name} will happen once usage fits.")

    if stripe_api.is_test_mode():
        previous = subscription.plan.code
        _apply_plan(subscription, plan)
        subscription.status = SubscriptionStatus.ACTIVE
        subscription.grace_ends_at = None
        subscription.read_only_until = None
        subscription.canceled_at = None
        subscription.updated_at = timezone.now()
        subscription.save()
        audit_record(clinic=clinic, action="billing.plan_changed", by=by, actor=user, object_type="plan",
                     object_id=plan.code, details={"from": previous, "test_mode": True})
        return PlanChange(applied=True, message=f"Test mode: the clinic is now on the {plan.name} plan.")

    if not plan.stripe_price_id:
        raise PortalError(f"The {plan.name} plan has no Stripe price yet; an operator must set it.")
    if not subscription.stripe_customer_id:
        subscription.stripe_customer_id = stripe_api.customer_create(
            clinic_uuid=str(clinic.uuid), name=clinic.name, email=user.email
        )
        subscription.save(update_fields=["stripe_customer_id"])
    if subscription.stripe_subscription_id and subscription.status != SubscriptionStatus.CANCELED:
        stripe_api.subscription_change_price(
            subscription_id=subscription.stripe_subscription_id, price_id=plan.stripe_price_id, plan_code=plan.code
        )
        audit_record(clinic=clinic, action="billing.plan_change_requested", by=by, actor=user,
                     object_type="plan", object_id=plan.code)
        return PlanChange(applied=False, message=f"Stripe is moving the clinic to the {plan.name} plan.")
    url = stripe_api.checkout_session_create(
        clinic_uuid=str(clinic.uuid),
        customer_id=subscription.stripe_customer_id,
        price_id=plan.stripe_price_id,
        plan_code=plan.code,
        success_url=success_url,
        cancel_url=cancel_url,
    )
    audit_record(clinic=clinic, action="billing.checkout_started", by=by, actor=user, object_type="plan",
                 object_id=plan.code)
    return PlanChange(applied=False, redirect_url=url)


@transaction.atomic
def subscription_cancel(*, clinic: Clinic, user: User, by: Actor | None = None) -> Subscription:
    """Cancel the subscription: read and export only for the retention period, then the data is destroyed."""
    subscription = Subscription.objects.select_for_update().get(clinic=clinic)
    if subscription.status in {SubscriptionStatus.CANCELED, SubscriptionStatus.DESTROYED}:
        return subscription
    if not stripe_api.is_test_mode() and subscription.stripe_subscription_id:
        stripe_api.subscription_cancel(subscription_id=subscription.stripe_subscription_id)
    _mark_canceled(subscription)
    audit_record(clinic=clinic, action="billing.canceled", by=by, actor=user, object_type="subscription",
                 object_id=str(clinic.uuid), details={"test_mode": stripe_api.is_test_mode()})
    return subscription


def _mark_canceled(subscription: Subscription) -> None:
    now = timezone.now()
    subscription.status = SubscriptionStatus.CANCELED
    subscription.canceled_at = subscription.canceled_at or now
    subscription.read_only_until = subscription.read_only_until or now + timedelta(days=settings.BILLING_RETENTION_DAYS)
    subscription.updated_at = now
    subscription.save()
    _notify(clinic=subscription.clinic, roles=(Role.OWNER, Role.ADMIN, Role.BILLING), template="billing_canceled",
            context={"subscription": subscription})


def billing_portal_url(*, clinic: Clinic, return_url: str) -> str:
    subscription = Subscription.objects.for_clinic(clinic).get()
    if stripe_api.is_test_mode() or not subscription.stripe_customer_id:
        raise PortalError("Payment methods and invoices are managed in Stripe once the clinic has subscribed.")
    return stripe_api.billing_portal_session_create(customer_id=subscription.stripe_customer_id, return_url=return_url)


def invoice_list(*, clinic: Clinic) -> list[dict[str, Any]]:
    subscription = Subscription.objects.for_clinic(clinic).first()
    if stripe_api.is_test_mode() or subscription is None or not subscription.stripe_customer_id:
        return []
    try:
        return stripe_api.invoice_list(customer_id=subscription.stripe_customer_id)
    except stripe_api.StripeError:
        logger.warning("Could not list invoices for clinic %s", clinic.uuid)
        return []


# --- Stripe webhooks ---------------------------------------------------------------------------------


def _subscription_for(obj: dict[str, Any]) -> Subscription | None:
    """Find the clinic's subscription an event object speaks of (by ids we stored, or our metadata)."""
    metadata = obj.get("metadata") or {}
    clinic_uuid = obj.get("client_reference_id") or metadata.get("clinic")
    query = Subscription.objects.select_for_update().select_related("clinic", "plan")
    if clinic_uuid:
        found = query.filter(clinic__uuid=clinic_uuid).first()
        if found:
            return found
    subscription_id = obj.get("subscription") if obj.get("object") != "subscription" else obj.get("id")
    if isinstance(subscription_id, dict):
        subscription_id = subscription_id.get("id")
    if subscription_id:
        found = query.filter(stripe_subscription_id=subscription_id).first()
        if found:
            return found
    customer = obj.get("customer")
    if customer:
        return query.filter(stripe_customer_id=customer).first()
    return None


def _plan_for_price(obj: dict[str, Any]) -> Plan | None:
    items = (obj.get("items") or {}).get("data") or []
    for item in items:
        price = (item.get("price") or {}).get("id")
        plan = Plan.objects.filter(stripe_price_id=price).first() if price else None
        if plan:
            return plan
    code = (obj.get("metadata") or {}).get("plan")
    return Plan.objects.filter(code=code).first() if code else None


def _names_another_clinic(subscription: Subscription, obj: dict[str, Any]) -> bool:
    """Say whether the event's customer or subscription is already another clinic's.

    The clinic is found by our metadata first; applying its handler would then copy another clinic's Stripe
    ids onto this one, and later events found by those ids would land on the wrong clinic.
    """
    others = Subscription.objects.exclude(pk=subscription.pk)
    subscription_id = obj.get("id") if obj.get("object") == "subscription" else obj.get("subscription")
    if isinstance(subscription_id, dict):
        subscription_id = subscription_id.get("id")
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    return bool(
        (subscription_id and others.filter(stripe_subscription_id=subscription_id).exists())
        or (customer and others.filter(stripe_customer_id=customer).exists())
    )


def stripe_event_check(event: Any) -> None:
    """Raise ValueError unless a verified event has the shape the handlers read (id, type, created, object)."""
    if not isinstance(event, dict):
        raise ValueError("The event is not a JSON object.")
    if not (isinstance(event.get("id"), str) and event["id"] and isinstance(event.get("type"), str)):
        raise ValueError("The event has no id or type.")
    if not isinstance(event.get("created"), int) or isinstance(event["created"], bool):
        raise ValueError("The event has no creation time.")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise ValueError("The event carries no object.")


def _is_stale(subscription: Subscription, event: dict[str, Any]) -> bool:
    # Stripe does not guarantee order; an event older than the last one applied must not roll state back.
    return event["created"] < subscription.last_event_at


def _on_checkout_completed(subscription: Subscription, event: dict[str, Any]) -> None:
    session = event["data"]["object"]
    subscription.stripe_customer_id = session.get("customer") or subscription.stripe_customer_id
    subscription.stripe_subscription_id = session.get("subscription") or subscription.stripe_subscription_id
    plan = Plan.objects.filter(code=(session.get("metadata") or {}).get("plan")).first()
    if plan:
        _apply_plan(subscription, plan)
    subscription.status = SubscriptionStatus.ACTIVE
    subscription.grace_ends_at = None
    subscription.read_only_until = None
    subscription.canceled_at = None


STRIPE_STATUS = {
    "trialing": SubscriptionStatus.TRIALING,
    "active": SubscriptionStatus.ACTIVE,
    "past_due": SubscriptionStatus.PAST_DUE,
    "unpaid": SubscriptionStatus.PAST_DUE,
    "canceled": SubscriptionStatus.CANCELED,
    "incomplete_expired": SubscriptionStatus.CANCELED,
}


def _on_subscription_changed(subscription: Subscription, event: dict[str, Any]) -> None:
    obj = event["data"]["object"]
    subscription.stripe_subscription_id = obj.get("id") or subscription.stripe_subscription_id
    subscription.stripe_customer_id = obj.get("customer") or subscription.stripe_customer_id
    plan = _plan_for_price(obj)
    if plan:
        _apply_plan(subscription, plan)
    period_end = obj.get("current_period_end") or ((obj.get("items") or {}).get("data") or [{}])[0].get("current_period_end")
    if period_end:
        subscription.current_period_end = datetime.fromtimestamp(period_end, tz=UTC)
    status = STRIPE_STATUS.get(obj.get("status", ""))
    if status == SubscriptionStatus.CANCELED:
        _mark_canceled(subscription)
    elif status == SubscriptionStatus.PAST_DUE:
        _mark_past_due(subscription)
    elif status is not None:
        subscription.status = status
        if status == SubscriptionStatus.ACTIVE:
            subscription.grace_ends_at = None


def _on_subscription_deleted(subscription: Subscription, event: dict[str, Any]) -> None:
    _mark_canceled(subscription)


def _on_invoice_paid(subscription: Subscription, event: dict[str, Any]) -> None:
    if subscription.status in {SubscriptionStatus.PAST_DUE, SubscriptionStatus.TRIALING}:
        subscription.status = SubscriptionStatus.ACTIVE
    subscription.grace_ends_at = None


def _mark_past_due(subscription: Subscription) -> None:
    first_failure = subscription.status != SubscriptionStatus.PAST_DUE
    subscription.status = SubscriptionStatus.PAST_DUE
    if subscription.grace_ends_at is None:
        subscription.grace_ends_at = timezone.now() + timedelta(days=settings.BILLING_GRACE_DAYS)
    if first_failure:
        _notify(clinic=subscription.clinic, roles=(Role.OWNER, Role.BILLING), template="billing_payment_failed",
                context={"subscription": subscription})


def _on_invoice_failed(subscription: Subscription, event: dict[str, Any]) -> None:
    _mark_past_due(subscription)


EVENT_HANDLERS: dict[str, Callable[[Subscription, dict[str, Any]], None]] = {
    "checkout.session.completed": _on_checkout_completed,
    "customer.subscription.created": _on_subscription_changed,
    "customer.subscription.updated": _on_subscription_changed,
    "customer.subscription.deleted": _on_subscription_deleted,
    "invoice.paid": _on_invoice_paid,
    "invoice.payment_failed": _on_invoice_failed,
}


@transaction.atomic
def stripe_event_process(*, event: dict[str, Any]) -> str:
    """Apply a verified Stripe event once; answer what was done ("duplicate", "ignored", "applied", ...).

    Raises ValueError for an event without the fields it needs (see ``stripe_event_check``).
    """
    stripe_event_check(event)
    try:
        with transaction.atomic():
            StripeEvent.objects.create(event_id=event["id"], type=event["type"], created=event["created"])
    except IntegrityError:
        return "duplicate"
    handler = EVENT_HANDLERS.get(event["type"])
    if handler is None:
        logger.info("Stripe event %s of type %s ignored", event["id"], event["type"])
        return "ignored"
    subscription = _subscription_for(event["data"]["object"])
    if subscription is None:
        logger.warning("Stripe event %s names no known clinic", event["id"])
        return "unknown_clinic"
    if subscription.status == SubscriptionStatus.DESTROYED:
        # The data and keys are gone for good: no event may make the clinic look subscribed again.
        logger.info("Stripe event %s for clinic %s, whose data is destroyed, ignored", event["id"],
                    subscription.clinic.uuid)
        return "destroyed"
    if _names_another_clinic(subscription, event["data"]["object"]):
        logger.warning("Stripe event %s names a customer or subscription of another clinic than %s; not applied",
                       event["id"], subscription.clinic.uuid)
        return "conflict"
    if _is_stale(subscription, event):
        logger.info("Stripe event %s is older than the state already applied", event["id"])
        return "stale"
    handler(subscription, event)
    subscription.last_event_at = event["created"]
    subscription.updated_at = timezone.now()
    subscription.save()
    audit_record(clinic=subscription.clinic, action="billing.stripe_event", actor_label="stripe",
                 object_type="stripe_event", object_id=event["id"], details={"type": event["type"]})
    return "applied"


# --- Periodic enforcement ------------------------------------------------------------------------------


def usage_warnings_check(*, clinic: Clinic) -> int:
    """E-mail owners, admins and billing admins when usage first passes 80% and 95%; return the level."""
    usage = selectors.usage_get(clinic=clinic)
    level = next((mark for mark in USAGE_WARNING_LEVELS if usage.percent >= mark), 0)
    updated = Subscription.objects.for_clinic(clinic).exclude(usage_warning_level=level)
    if level > 0:
        # Conditional update: two workers finishing uploads at once send one e-mail, not two.
        updated = updated.filter(usage_warning_level__lt=level)
    if updated.update(usage_warning_level=level) and level > 0:
        _notify(clinic=clinic, roles=(Role.OWNER, Role.ADMIN, Role.BILLING), template="billing_usage_warning",
                context={"level": level, "used": _format_gb(usage.used_bytes), "quota": _format_gb(usage.quota_bytes)})
    return level


def pending_plan_apply(*, subscription: Subscription) -> bool:
    """Apply a scheduled downgrade once usage fits under it."""
    plan = subscription.pending_plan
    if plan is None:
        return False
    if selectors.usage_get(clinic=subscription.clinic).used_bytes > plan.storage_bytes:
        return False
    owner = Membership.objects.for_clinic(subscription.clinic).filter(role=Role.OWNER).select_related("user").first()
    if owner is None:
        return False
    plan_change(clinic=subscription.clinic, plan=plan, user=owner.user)
    return True


def retention_ended(subscription: Subscription, *, now: datetime) -> bool:
    """Whether a canceled subscription's reading period is over, so its clinic's data is to be destroyed."""
    return (
        subscription.status == SubscriptionStatus.CANCELED
        and subscription.read_only_until is not None
        and subscription.read_only_until <= now
    )


def clinic_data_destroy(*, clinic: Clinic) -> bool:
    """Destroy a canceled clinic's data once its retention period has ended; return whether it did.

    The images, held instances and the clinic's keys are erased by ``studies.erasure`` (beside the data);
    then the subscription is marked destroyed. Runs on the replica-admin worker. Safe to run twice. Does
    nothing unless the subscription is still canceled past its retention period (or destroyed already), since
    the message may have waited in the queue while the clinic subscribed again.
    """
    subscription = Subscription.objects.for_clinic(clinic).first()
    due = subscription is not None and (
        subscription.status == SubscriptionStatus.DESTROYED or retention_ended(subscription, now=timezone.now())
    )
    if not due:
        logger.warning("Not destroying the data of clinic %s: its subscription is not canceled past retention",
                       clinic.pk)
        return False
    study_erasure.clinic_images_erase(clinic=clinic)
    Subscription.objects.for_clinic(clinic).update(status=SubscriptionStatus.DESTROYED, updated_at=timezone.now())
    audit_record(clinic=clinic, action="billing.data_destroyed", actor_label="system", object_type="clinic",
                 object_id=str(clinic.uuid))
    return True


def billing_enforce() -> None:
    """Daily: apply scheduled downgrades, warn on usage, destroy data whose retention period has ended."""
    now = timezone.now()
    for subscription in Subscription.objects.select_related("clinic", "pending_plan").exclude(
        status=SubscriptionStatus.DESTROYED
    ):
        usage_warnings_check(clinic=subscription.clinic)
        pending_plan_apply(subscription=subscription)
        if retention_ended(subscription, now=now):
            # Breaks the cycle billing.tasks -> billing.services (tasks call the services).
            from billing import tasks

            tasks.clinic_data_destroy.delay(clinic_id=subscription.clinic_id)


def usage_reconcile(*, clinic: Clinic) -> study_ingest.UsageCorrection | None:
    """Recompute the clinic's ``used_bytes`` from the index and correct drift at once; audit each correction.

    The periodic side of ``studies.ingest.usage_recount`` (an upload the quota would refuse runs it too);
    returns None when nothing changed.
    """
    return study_ingest.usage_recount(clinic=clinic, reason="periodic reconcile")


def usage_reconcile_all() -> int:
    """Reconcile every clinic's usage; return how many were corrected."""
    # Unscoped: the periodic reconcile covers every clinic.
    return sum(
        usage_reconcile(clinic=clinic) is not None for clinic in Clinic.objects.order_by("pk").iterator()
    )

"""The billing page (owners and billing admins) and the Stripe webhook."""

from __future__ import annotations

import logging
from http import HTTPStatus

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import selectors, services, stripe_api
from billing.forms import PlanChangeForm
from portal.exceptions import PortalError
from portal.public_url import absolute_url
from tenants.audit import Actor
from tenants.middleware import ClinicRequest
from tenants.permissions import require_action
from tenants.roles import Action

logger = logging.getLogger(__name__)


@require_action(Action.BILLING)
def overview(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    usage = selectors.usage_get(clinic=request.clinic)
    context = {
        "subscription": selectors.subscription_get(clinic=request.clinic),
        "usage": usage,
        "plans": selectors.plan_list(),
        "by_modality": selectors.usage_by_modality(clinic=request.clinic),
        "by_month": selectors.usage_by_month(clinic=request.clinic),
        "invoices": services.invoice_list(clinic=request.clinic),
        "test_mode": stripe_api.is_test_mode(),
        "upload_block_reason": selectors.upload_block_reason(clinic=request.clinic),
    }
    return render(request, "billing/overview.html", context)


@require_POST
@require_action(Action.BILLING)
def plan_change(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    form = PlanChangeForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(form.errors.get("plan", ["Choose a plan."])))
        return redirect("billing:overview", clinic_slug=clinic_slug)
    page = absolute_url(request, reverse("billing:overview", kwargs={"clinic_slug": clinic_slug}))
    try:
        change = services.plan_change(
            clinic=request.clinic,
            plan=form.cleaned_data["plan"],
            user=request.user,
            success_url=page + "?checkout=success",
            cancel_url=page + "?checkout=canceled",
            when_usage_fits=form.cleaned_data["when_usage_fits"],
            by=Actor.from_request(request),
        )
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("billing:overview", clinic_slug=clinic_slug)
    if change.redirect_url:
        return redirect(change.redirect_url)
    messages.success(request, change.message)
    return redirect("billing:overview", clinic_slug=clinic_slug)


@require_POST
@require_action(Action.BILLING)
def cancel(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    if request.POST.get("confirm") != request.clinic.slug:
        messages.error(request, "Type the clinic's address to confirm the cancellation.")
        return redirect("billing:overview", clinic_slug=clinic_slug)
    subscription = services.subscription_cancel(clinic=request.clinic, user=request.user, by=Actor.from_request(request))
    messages.warning(
        request,
        f"The subscription is canceled. Reading and export keep working until "
        f"{subscription.read_only_until:%Y-%m-%d}; then the clinic's data is destroyed.",
    )
    return redirect("billing:overview", clinic_slug=clinic_slug)


@require_action(Action.BILLING)
def customer_portal(request: ClinicRequest, clinic_slug: str) -> HttpResponse:
    page = absolute_url(request, reverse("billing:overview", kwargs={"clinic_slug": clinic_slug}))
    try:
        return redirect(services.billing_portal_url(clinic=request.clinic, return_url=page))
    except PortalError as exc:
        messages.info(request, exc.message)
        return redirect("billing:overview", clinic_slug=clinic_slug)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Receive a Stripe event: verify its signature on the raw body, then apply it once."""
    signature = request.META.get("HTTP_STRIPE_SIGNATURE", "")
    try:
        event = stripe_api.webhook_event_construct(payload=request.body, signature=signature)
    except (ValueError, stripe_api.SignatureVerificationError):
        logger.warning("Rejected a Stripe webhook with a bad or stale signature from %s", request.META.get("REMOTE_ADDR"))
        return JsonResponse({"error": "invalid_signature", "message": "The signature is missing, wrong or too old."},
                            status=HTTPStatus.BAD_REQUEST)
    try:
        outcome = services.stripe_event_process(event=event)
    except ValueError as exc:
        # Signed but not an event we can read: answering 500 would only make Stripe retry it for days.
        logger.warning("Rejected a signed Stripe webhook that is not a readable event: %s", exc)
        return JsonResponse({"error": "malformed_event", "message": f"{exc} Nothing was changed."},
                            status=HTTPStatus.BAD_REQUEST)
    # Stripe retries on non-2xx, so a duplicate or an unknown type still gets 200.
    return JsonResponse({"received": True, "outcome": outcome})

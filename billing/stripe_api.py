"""Every call to Stripe goes through here: the one module that imports `stripe`, and the seam tests replace.

Without STRIPE_SECRET_KEY the portal runs in billing test mode and nothing here is called.
"""

from __future__ import annotations

from typing import Any

import stripe
from django.conf import settings

# Tests put a stripe.HTTPClient subclass here to capture the requests that would be sent.
HTTP_CLIENT: Any = None
TIMEOUT_SECONDS = 20


def is_test_mode() -> bool:
    return not settings.STRIPE_SECRET_KEY


def _client() -> stripe.StripeClient:
    http_client = HTTP_CLIENT if HTTP_CLIENT is not None else stripe.RequestsClient(timeout=TIMEOUT_SECONDS)
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, http_client=http_client, max_network_retries=2)


def customer_create(*, clinic_uuid: str, name: str, email: str) -> str:
    customer = _client().v1.customers.create(
        params={"name": name, "email": email, "metadata": {"clinic": clinic_uuid}},
        options={"idempotency_key": f"customer-{clinic_uuid}"},
    )
    return customer.id


def checkout_session_create(
    *, clinic_uuid: str, customer_id: str, price_id: str, plan_code: str, success_url: str, cancel_url: str
) -> str:
    """Start a Stripe Checkout for a new subscription and return the page to send the browser to."""
    session = _client().v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer_id,
            "client_reference_id": clinic_uuid,
            "line_items": [{"price": price_id, "quantity": 1}],
            "success_url": success_url,
            "cancel_url": cancel_url,
            "metadata": {"clinic": clinic_uuid, "plan": plan_code},
            "subscription_data": {"metadata": {"clinic": clinic_uuid, "plan": plan_code}},
        },
    )
    return session.url or ""


def subscription_change_price(*, subscription_id: str, price_id: str, plan_code: str) -> None:
    """Move an existing subscription to another price; Stripe prorates and confirms by webhook."""
    client = _client()
    subscription = client.v1.subscriptions.retrieve(subscription_id)
    item_id = subscription["items"]["data"][0]["id"]
    client.v1.subscriptions.update(
        subscription_id,
        params={"items": [{"id": item_id, "price": price_id}], "metadata": {"plan": plan_code},
                "proration_behavior": "create_prorations"},
    )


def subscription_cancel(*, subscription_id: str) -> None:
    _client().v1.subscriptions.cancel(subscription_id)


def billing_portal_session_create(*, customer_id: str, return_url: str) -> str:
    """Open Stripe's customer portal (payment methods, invoices) and return its address."""
    session = _client().v1.billing_portal.sessions.create(params={"customer": customer_id, "return_url": return_url})
    return session.url


def invoice_list(*, customer_id: str, limit: int = 24) -> list[dict[str, Any]]:
    invoices = _client().v1.invoices.list(params={"customer": customer_id, "limit": limit})
    return [
        {
            "number": invoice.get("number") or invoice["id"],
            "created": invoice["created"],
            "amount_due": invoice.get("amount_due", 0),
            "currency": invoice.get("currency", "usd"),
            "status": invoice.get("status", ""),
            "url": invoice.get("hosted_invoice_url") or "",
        }
        for invoice in invoices.data
    ]


def webhook_event_construct(*, payload: bytes, signature: str) -> dict[str, Any]:
    """Verify a webhook's signature and age and return the event as plain data.

    Raises ValueError for a payload that is not JSON and stripe.SignatureVerificationError for a forged
    or stale signature.
    """
    event = stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    return event.to_dict()


SignatureVerificationError = stripe.SignatureVerificationError
StripeError = stripe.StripeError

"""Billing seen from outside: webhooks that must change nothing, and what the billing role may read."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from billing.models import StripeEvent, Subscription, SubscriptionStatus
from tenants.models import Clinic
from tests.billing.test_billing import make_event, sign, webhook  # noqa: F401  (the fixture)


def _post_raw(client, payload: bytes):
    return client.post("/billing/stripe/webhook/", payload, content_type="application/json",
                       HTTP_STRIPE_SIGNATURE=sign(payload))


@pytest.mark.parametrize("payload", [
    b'{"id": "evt_no_type"}',
    b'{"id": "evt_x", "object": "event", "type": "invoice.paid", "created": 1}',
    b'{"id": "evt_y", "object": "event", "type": "invoice.paid", "created": "soon", "data": {"object": {}}}',
    b'{"id": "evt_z", "object": "event", "type": "invoice.paid", "created": 1, "data": {"object": []}}',
])
def test_a_signed_but_malformed_event_gets_400_and_changes_nothing(client, settings, clinic, payload):
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test_secret"

    response = _post_raw(client, payload)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["error"] == "malformed_event"
    assert not StripeEvent.objects.exists()


def test_a_non_json_body_gets_400(client, settings, clinic):
    settings.STRIPE_WEBHOOK_SECRET = "whsec_test_secret"

    response = _post_raw(client, b"\xff\xfe not json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not StripeEvent.objects.exists()


def test_an_event_naming_another_clinics_subscription_changes_neither_clinic(
    webhook, clinic, other_clinic  # noqa: F811
):
    Subscription.objects.filter(clinic=other_clinic).update(
        stripe_customer_id="cus_B", stripe_subscription_id="sub_B", status=SubscriptionStatus.ACTIVE
    )
    Subscription.objects.filter(clinic=clinic).update(stripe_customer_id="cus_A", stripe_subscription_id="sub_A")
    obj = {"object": "subscription", "id": "sub_B", "customer": "cus_B", "status": "canceled",
           "metadata": {"clinic": str(clinic.uuid)}}

    response = webhook(make_event("customer.subscription.updated", obj))

    assert response.status_code == HTTPStatus.OK
    assert response.json()["outcome"] == "conflict"
    mine = Subscription.objects.get(clinic=clinic)
    theirs = Subscription.objects.get(clinic=other_clinic)
    assert (mine.stripe_subscription_id, mine.stripe_customer_id, mine.status) == (
        "sub_A", "cus_A", SubscriptionStatus.TRIALING)
    assert (theirs.stripe_subscription_id, theirs.status) == ("sub_B", SubscriptionStatus.ACTIVE)


def test_a_checkout_naming_another_clinics_customer_does_not_take_it_over(webhook, clinic, other_clinic):  # noqa: F811
    Subscription.objects.filter(clinic=other_clinic).update(stripe_customer_id="cus_B", stripe_subscription_id="sub_B")
    session = {"object": "checkout.session", "client_reference_id": str(clinic.uuid), "customer": "cus_B",
               "subscription": "sub_B", "metadata": {"clinic": str(clinic.uuid), "plan": "enterprise"}}

    response = webhook(make_event("checkout.session.completed", session))

    assert response.json()["outcome"] == "conflict"
    mine = Subscription.objects.get(clinic=clinic)
    assert (mine.stripe_customer_id, mine.plan.code, mine.status) == ("", "starter", SubscriptionStatus.TRIALING)


def test_an_event_for_a_destroyed_clinic_does_not_bring_the_subscription_back(webhook, clinic):  # noqa: F811
    Subscription.objects.filter(clinic=clinic).update(
        status=SubscriptionStatus.DESTROYED, stripe_subscription_id="sub_A"
    )
    obj = {"object": "subscription", "id": "sub_A", "status": "active", "metadata": {"clinic": str(clinic.uuid)}}

    response = webhook(make_event("customer.subscription.updated", obj))

    assert response.status_code == HTTPStatus.OK
    assert Subscription.objects.get(clinic=clinic).status == SubscriptionStatus.DESTROYED


def test_usage_api_answers_the_documented_keys(client, clinic, billing_admin, settings):
    client.force_login(billing_admin)

    body = client.get(f"/api/v1/clinics/{clinic.slug}/usage/").json()

    assert {"used_bytes", "quota_bytes", "plan", "trash_days"} <= set(body)
    assert body["trash_days"] == settings.TRASH_DAYS
    assert body["quota_bytes"] == Clinic.objects.get(pk=clinic.pk).quota_bytes


@pytest.mark.parametrize("path", ["studies/", "audit/", "shares/", "anonymizations/", "backup/"])
def test_billing_admin_reads_no_patient_data_over_the_api(client, clinic, billing_admin, path):
    client.force_login(billing_admin)

    response = client.get(f"/api/v1/clinics/{clinic.slug}/{path}")

    assert response.status_code == HTTPStatus.FORBIDDEN, response.content


@pytest.mark.parametrize("path", ["studies/", "studies/trash/", "audit/", "exports/", "shares/", "upload/"])
def test_billing_admin_reads_no_patient_data_in_the_pages(client, clinic, billing_admin, path):
    client.force_login(billing_admin)

    response = client.get(f"/c/{clinic.slug}/{path}")

    assert response.status_code in {HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND}, (path, response.status_code)

"""Plans, quotas and Stripe: the billing page, test mode, webhooks and enforcement."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta
from http import HTTPStatus
from urllib.parse import parse_qs

import pytest
import stripe
from django.core import mail
from django.utils import timezone

from billing import selectors, services, stripe_api
from billing.models import GB, Plan, StripeEvent, Subscription, SubscriptionStatus
from tenants.models import AuditEvent, Clinic

WEBHOOK_SECRET = "whsec_test_secret"


def billing_url(clinic: Clinic, suffix: str = "") -> str:
    return f"/c/{clinic.slug}/billing/{suffix}"


def sign(payload: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={signature}"


def make_event(event_type: str, obj: dict, *, created: int | None = None, event_id: str | None = None) -> dict:
    created = created or int(time.time())
    return {
        "id": event_id or f"evt_{event_type.replace('.', '_')}_{created}",
        "object": "event",
        "type": event_type,
        "created": created,
        "data": {"object": obj},
    }


@pytest.fixture
def webhook(client, settings):
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET

    def post(event: dict, **sign_options) -> object:
        payload = json.dumps(event).encode()
        return client.post("/billing/stripe/webhook/", payload, content_type="application/json",
                           HTTP_STRIPE_SIGNATURE=sign(payload, **sign_options))

    return post


class RecordingStripeHTTP(stripe.HTTPClient):
    """Stands in for the network at the stripe library's HTTP boundary and records each request."""

    name = "recording"

    def __init__(self, responses: dict[tuple[str, str], dict]) -> None:
        super().__init__()
        self.responses = responses
        self.requests: list[tuple[str, str, dict]] = []

    def request(self, method, url, headers, post_data=None, *, _usage=None):
        path = url.split("api.stripe.com", 1)[-1].split("?", 1)[0]
        self.requests.append((method.upper(), path, parse_qs(post_data or "")))
        body = self.responses.get((method.upper(), path), {"id": "obj_unknown", "object": "unknown"})
        return json.dumps(body), 200, {}

    def close(self):
        pass


@pytest.fixture
def stripe_http(settings, monkeypatch):
    settings.STRIPE_SECRET_KEY = "sk_test_portal"
    fake = RecordingStripeHTTP({})
    monkeypatch.setattr(stripe_api, "HTTP_CLIENT", fake)
    return fake


def test_new_clinic_starts_on_a_14_day_starter_trial(clinic):
    subscription = Subscription.objects.get(clinic=clinic)

    assert subscription.plan.code == "starter"
    assert subscription.status == SubscriptionStatus.TRIALING
    assert timedelta(days=13) < subscription.trial_ends_at - timezone.now() <= timedelta(days=14)
    assert Clinic.objects.get(pk=clinic.pk).quota_bytes == 100 * GB


def test_seeded_plans_have_the_design_prices(db):
    plans = {plan.code: (plan.storage_gb, plan.price) for plan in Plan.objects.all()}

    assert plans == {"starter": (100, "79.99"), "professional": (500, "99.99"), "enterprise": (2000, "499.99")}


def test_billing_admin_sees_plan_and_usage_but_no_patient_data(client, clinic, billing_admin):
    client.force_login(billing_admin)

    response = client.get(billing_url(clinic))

    assert response.status_code == HTTPStatus.OK
    assert b"Starter" in response.content
    assert b"Test mode" in response.content


@pytest.mark.parametrize("who", ["clinician", "admin", "uploader"])
def test_members_without_the_billing_right_get_403(client, clinic, who, request):
    client.force_login(request.getfixturevalue(who))

    response = client.get(billing_url(clinic))

    assert response.status_code == HTTPStatus.FORBIDDEN


def test_outsider_gets_404_and_cannot_change_the_plan(client, clinic, outsider):
    client.force_login(outsider)

    page = client.get(billing_url(clinic))
    change = client.post(billing_url(clinic, "plan/"), {"plan": "enterprise"})

    assert page.status_code == HTTPStatus.NOT_FOUND
    assert change.status_code == HTTPStatus.NOT_FOUND
    assert Subscription.objects.get(clinic=clinic).plan.code == "starter"


def test_test_mode_upgrade_applies_at_once_and_raises_the_quota(client, clinic, billing_admin):
    client.force_login(billing_admin)

    response = client.post(billing_url(clinic, "plan/"), {"plan": "professional"})

    assert response.status_code == HTTPStatus.FOUND
    subscription = Subscription.objects.get(clinic=clinic)
    assert (subscription.plan.code, subscription.status) == ("professional", SubscriptionStatus.ACTIVE)
    assert Clinic.objects.get(pk=clinic.pk).quota_bytes == 500 * GB
    event = AuditEvent.objects.get(clinic=clinic, action="billing.plan_changed")
    assert event.details == {"from": "starter", "test_mode": True}


def test_unknown_plan_is_refused_and_nothing_changes(client, clinic, owner):
    client.force_login(owner)

    client.post(billing_url(clinic, "plan/"), {"plan": "platinum"})

    assert Subscription.objects.get(clinic=clinic).plan.code == "starter"


def test_downgrade_below_usage_is_refused_with_an_explanation(client, clinic, owner):
    services.plan_change(clinic=clinic, plan=Plan.objects.get(code="professional"), user=owner)
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=150 * GB)
    client.force_login(owner)

    response = client.post(billing_url(clinic, "plan/"), {"plan": "starter"}, follow=True)

    assert "more than the Starter plan" in response.content.decode()
    assert Subscription.objects.get(clinic=clinic).plan.code == "professional"
    assert Clinic.objects.get(pk=clinic.pk).quota_bytes == 500 * GB


def test_scheduled_downgrade_takes_effect_once_usage_fits(clinic, owner):
    services.plan_change(clinic=clinic, plan=Plan.objects.get(code="professional"), user=owner)
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=150 * GB)
    services.plan_change(clinic=clinic, plan=Plan.objects.get(code="starter"), user=owner, when_usage_fits=True)
    services.billing_enforce()
    assert Subscription.objects.get(clinic=clinic).plan.code == "professional"

    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=90 * GB)
    services.billing_enforce()

    subscription = Subscription.objects.get(clinic=clinic)
    assert subscription.plan.code == "starter"
    assert subscription.pending_plan is None


def test_usage_warnings_are_mailed_once_at_80_and_at_95_percent(clinic, owner, billing_admin):
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=81 * GB)
    services.usage_warnings_check(clinic=clinic)
    services.usage_warnings_check(clinic=clinic)
    Clinic.objects.filter(pk=clinic.pk).update(used_bytes=96 * GB)
    services.usage_warnings_check(clinic=clinic)

    subjects = [message.subject for message in mail.outbox]
    assert subjects == ["Clinic A: storage 80% used", "Clinic A: storage 95% used"]
    assert set(mail.outbox[0].to) == {owner.email, billing_admin.email}


def test_ended_trial_blocks_uploads_but_nothing_else(clinic):
    Subscription.objects.filter(clinic=clinic).update(trial_ends_at=timezone.now() - timedelta(minutes=1))

    reason = selectors.upload_block_reason(clinic=clinic)

    assert "trial has ended" in reason


@pytest.fixture
def tasks_inline():
    """Run Celery tasks where they are queued, as a worker would."""
    from portal.celery import app

    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


def test_cancel_in_test_mode_keeps_reading_then_destroys_the_data(client, clinic, owner, tmp_path, tasks_inline):
    from studies.archive import keys, stores
    from studies.ingest import instance_ingest
    from studies.models import ClinicKey, Instance
    from tests.dicom_files import PYDICOM_SAMPLES

    sample = PYDICOM_SAMPLES / "CT_small.dcm"
    instance = instance_ingest(clinic=clinic, source_path=str(sample)).instance
    key_document = keys.key_document_key(clinic_uuid=clinic.uuid, key_id=instance.key_id)
    client.force_login(owner)

    client.post(billing_url(clinic, "cancel/"), {"confirm": clinic.slug})

    subscription = Subscription.objects.get(clinic=clinic)
    assert subscription.status == SubscriptionStatus.CANCELED
    assert "canceled" in selectors.upload_block_reason(clinic=clinic)
    assert any("subscription canceled" in message.subject for message in mail.outbox)
    assert client.get(f"/c/{clinic.slug}/studies/{instance.series.study.uuid}/download/").status_code == 200
    Subscription.objects.filter(clinic=clinic).update(read_only_until=timezone.now() - timedelta(seconds=1))

    services.billing_enforce()

    assert Subscription.objects.get(clinic=clinic).status == SubscriptionStatus.DESTROYED
    assert not Instance.objects.filter(clinic=clinic).exists()
    assert not ClinicKey.objects.filter(clinic=clinic).exists()
    for name in stores.STORE_NAMES:
        store = stores.get_store(name)
        assert not store.exists(instance.object_key) and not store.exists(key_document)
    assert Clinic.objects.get(pk=clinic.pk).used_bytes == 0


def test_cancel_needs_the_typed_confirmation(client, clinic, owner):
    client.force_login(owner)

    client.post(billing_url(clinic, "cancel/"), {"confirm": "yes"})

    assert Subscription.objects.get(clinic=clinic).status == SubscriptionStatus.TRIALING


# --- webhooks ---------------------------------------------------------------------------------------


def test_forged_webhook_is_rejected_and_changes_nothing(webhook, clinic):
    event = make_event("invoice.payment_failed", {"object": "invoice", "metadata": {"clinic": str(clinic.uuid)}})

    response = webhook(event, secret="whsec_wrong")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not StripeEvent.objects.exists()
    assert Subscription.objects.get(clinic=clinic).status == SubscriptionStatus.TRIALING


def test_stale_webhook_signature_is_rejected(webhook, clinic):
    event = make_event("invoice.paid", {"object": "invoice", "metadata": {"clinic": str(clinic.uuid)}})

    response = webhook(event, timestamp=int(time.time()) - 3600)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not StripeEvent.objects.exists()


def test_checkout_completed_activates_the_chosen_plan(webhook, clinic):
    session = {"object": "checkout.session", "client_reference_id": str(clinic.uuid), "customer": "cus_1",
               "subscription": "sub_1", "metadata": {"clinic": str(clinic.uuid), "plan": "enterprise"}}

    response = webhook(make_event("checkout.session.completed", session))

    assert response.status_code == HTTPStatus.OK
    subscription = Subscription.objects.get(clinic=clinic)
    assert (subscription.plan.code, subscription.status) == ("enterprise", SubscriptionStatus.ACTIVE)
    assert (subscription.stripe_customer_id, subscription.stripe_subscription_id) == ("cus_1", "sub_1")
    assert Clinic.objects.get(pk=clinic.pk).quota_bytes == 2000 * GB


def test_a_redelivered_event_is_processed_once(webhook, clinic, owner):
    event = make_event("invoice.payment_failed", {"object": "invoice", "metadata": {"clinic": str(clinic.uuid)}})

    first = webhook(event)
    Subscription.objects.filter(clinic=clinic).update(grace_ends_at=None, status=SubscriptionStatus.ACTIVE)
    second = webhook(event)

    assert (first.json()["outcome"], second.json()["outcome"]) == ("applied", "duplicate")
    assert Subscription.objects.get(clinic=clinic).status == SubscriptionStatus.ACTIVE
    assert StripeEvent.objects.count() == 1


def test_an_older_event_arriving_late_does_not_roll_the_subscription_back(webhook, clinic):
    Plan.objects.filter(code="professional").update(stripe_price_id="price_pro")
    Plan.objects.filter(code="enterprise").update(stripe_price_id="price_ent")
    now = int(time.time())

    def updated(price: str, created: int) -> dict:
        obj = {"object": "subscription", "id": "sub_1", "customer": "cus_1", "status": "active",
               "metadata": {"clinic": str(clinic.uuid)}, "items": {"data": [{"price": {"id": price}}]}}
        return make_event("customer.subscription.updated", obj, created=created, event_id=f"evt_{price}")

    webhook(updated("price_ent", now))
    late = webhook(updated("price_pro", now - 60))

    assert late.json()["outcome"] == "stale"
    assert Subscription.objects.get(clinic=clinic).plan.code == "enterprise"


def test_payment_failure_opens_a_grace_period_then_stops_uploads(webhook, clinic, owner):
    event = make_event("invoice.payment_failed", {"object": "invoice", "metadata": {"clinic": str(clinic.uuid)}})

    webhook(event)

    subscription = Subscription.objects.get(clinic=clinic)
    assert subscription.status == SubscriptionStatus.PAST_DUE
    assert timedelta(days=13) < subscription.grace_ends_at - timezone.now() <= timedelta(days=14)
    assert selectors.upload_block_reason(clinic=clinic) is None
    assert [m.subject for m in mail.outbox] == ["Clinic A: a payment failed"]
    Subscription.objects.filter(clinic=clinic).update(grace_ends_at=timezone.now() - timedelta(seconds=1))
    assert "uploads are paused" in selectors.upload_block_reason(clinic=clinic)


def test_invoice_paid_ends_the_grace_period(webhook, clinic):
    failed = make_event("invoice.payment_failed", {"object": "invoice", "metadata": {"clinic": str(clinic.uuid)}},
                        created=int(time.time()) - 10)
    paid = make_event("invoice.paid", {"object": "invoice", "metadata": {"clinic": str(clinic.uuid)}})

    webhook(failed)
    webhook(paid)

    subscription = Subscription.objects.get(clinic=clinic)
    assert (subscription.status, subscription.grace_ends_at) == (SubscriptionStatus.ACTIVE, None)


def test_subscription_deleted_makes_the_clinic_read_only(webhook, clinic):
    obj = {"object": "subscription", "id": "sub_1", "status": "canceled", "metadata": {"clinic": str(clinic.uuid)}}

    webhook(make_event("customer.subscription.deleted", obj))

    subscription = Subscription.objects.get(clinic=clinic)
    assert subscription.status == SubscriptionStatus.CANCELED
    assert timedelta(days=29) < subscription.read_only_until - timezone.now() <= timedelta(days=30)


def test_unknown_event_types_are_acknowledged(db, webhook):
    response = webhook(make_event("charge.refunded", {"object": "charge"}))

    assert response.status_code == HTTPStatus.OK
    assert response.json()["outcome"] == "ignored"


# --- outgoing Stripe calls ---------------------------------------------------------------------------


def test_upgrade_with_stripe_keys_goes_through_checkout(client, clinic, owner, stripe_http):
    Plan.objects.filter(code="professional").update(stripe_price_id="price_pro")
    stripe_http.responses[("POST", "/v1/customers")] = {"id": "cus_new", "object": "customer"}
    stripe_http.responses[("POST", "/v1/checkout/sessions")] = {
        "id": "cs_1", "object": "checkout.session", "url": "https://checkout.stripe.test/cs_1"}
    client.force_login(owner)

    response = client.post(billing_url(clinic, "plan/"), {"plan": "professional"})

    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == "https://checkout.stripe.test/cs_1"
    method, path, form = stripe_http.requests[-1]
    assert (method, path) == ("POST", "/v1/checkout/sessions")
    assert form["line_items[0][price]"] == ["price_pro"]
    assert form["client_reference_id"] == [str(clinic.uuid)]
    assert form["customer"] == ["cus_new"]
    # Nothing changes until Stripe confirms by webhook.
    assert Subscription.objects.get(clinic=clinic).plan.code == "starter"


def test_plan_change_of_a_running_stripe_subscription_reprices_it(clinic, owner, stripe_http):
    Plan.objects.filter(code="enterprise").update(stripe_price_id="price_ent")
    Subscription.objects.filter(clinic=clinic).update(
        stripe_customer_id="cus_1", stripe_subscription_id="sub_1", status=SubscriptionStatus.ACTIVE)
    stripe_http.responses[("GET", "/v1/subscriptions/sub_1")] = {
        "id": "sub_1", "object": "subscription", "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item"}]}}
    stripe_http.responses[("POST", "/v1/subscriptions/sub_1")] = {"id": "sub_1", "object": "subscription"}

    services.plan_change(clinic=clinic, plan=Plan.objects.get(code="enterprise"), user=owner)

    method, path, form = stripe_http.requests[-1]
    assert (method, path) == ("POST", "/v1/subscriptions/sub_1")
    assert form["items[0][id]"] == ["si_1"]
    assert form["items[0][price]"] == ["price_ent"]

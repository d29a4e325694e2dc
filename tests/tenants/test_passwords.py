from __future__ import annotations

import re
from http import HTTPStatus

import pytest
from django.core import mail
from django.test import Client

from tenants.models import AuditEvent
from tests.factories import PASSWORD

# Reset mails are queued by the request and sent by the worker: here, in place.
pytestmark = pytest.mark.usefixtures("tasks_run_inline")

NEW_PASSWORD = "Silver-Lantern-29#"


def reset_link(client, email: str) -> str:
    client.post("/accounts/password/reset/", {"email": email})
    return re.search(r"http://testserver(/accounts/password/reset/\S+/\S+/)", mail.outbox[-1].body).group(1)


def test_password_reset_by_email_link(client, owner, clinic):
    link = client.get(reset_link(client, owner.email.upper()))["Location"]

    response = client.post(link, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})

    assert response["Location"] == "/accounts/password/reset/done/"
    owner.refresh_from_db()
    assert owner.check_password(NEW_PASSWORD)
    assert AuditEvent.objects.for_clinic(clinic).filter(action="auth.password_reset").exists()


def test_password_reset_for_unknown_email_sends_nothing_and_says_the_same(client, db):
    response = client.post("/accounts/password/reset/", {"email": "nobody@nowhere.example"}, follow=True)

    assert "If an account uses that address" in response.content.decode()
    assert not mail.outbox


def test_password_reset_rejects_weak_password_naming_rules(client, owner, clinic):
    link = client.get(reset_link(client, owner.email))["Location"]

    response = client.post(link, {"new_password1": "alllowercaseletters", "new_password2": "alllowercaseletters"})

    text = response.content.decode()
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "an upper-case letter" in text and "a digit" in text and "a special character" in text
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)


def test_password_reset_link_works_once(client, owner, clinic):
    link = reset_link(client, owner.email)
    form_url = client.get(link)["Location"]
    client.post(form_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})

    again = Client().get(link, follow=True)

    assert "has been used already or has expired" in again.content.decode()


def test_password_reset_lifts_a_lockout(client, owner, clinic):
    for _ in range(5):
        client.post("/accounts/login/", {"username": owner.email, "password": "Wrong-password-1!"})
    link = client.get(reset_link(client, owner.email))["Location"]
    client.post(link, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})

    response = client.post("/accounts/login/", {"username": owner.email, "password": NEW_PASSWORD})

    assert response.status_code == HTTPStatus.FOUND


def test_password_change_keeps_this_session_and_ends_the_others(owner, clinic):
    here, elsewhere = Client(), Client()
    here.post("/accounts/login/", {"username": owner.email, "password": PASSWORD})
    elsewhere.post("/accounts/login/", {"username": owner.email, "password": PASSWORD})

    response = here.post("/accounts/password/change/", {
        "old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD,
    })

    assert response["Location"] == "/accounts/account/"
    assert here.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.OK
    assert elsewhere.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.FOUND
    assert AuditEvent.objects.for_clinic(clinic).filter(action="auth.password_changed").exists()


def test_password_change_rejects_weak_password_and_wrong_old_one(client, owner, clinic):
    client.force_login(owner)

    weak = client.post("/accounts/password/change/", {
        "old_password": PASSWORD, "new_password1": "owner@clinic-a.example", "new_password2": "owner@clinic-a.example",
    })
    wrong_old = client.post("/accounts/password/change/", {
        "old_password": "nope", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD,
    })

    assert weak.status_code == wrong_old.status_code == HTTPStatus.BAD_REQUEST
    assert "too similar" in weak.content.decode()
    assert "old password was entered incorrectly" in wrong_old.content.decode()
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)


def test_password_change_refuses_a_guessable_password(client, owner, clinic):
    client.force_login(owner)

    response = client.post("/accounts/password/change/", {
        "old_password": PASSWORD, "new_password1": "Welcome@12345", "new_password2": "Welcome@12345",
    })

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "too easy to guess" in response.content.decode()
    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)

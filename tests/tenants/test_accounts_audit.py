"""Accounts and sessions, tried from outside as an attacker or a careless user would (security audit)."""

from __future__ import annotations

import re
import time
from http import HTTPStatus

import pytest
from django.core import mail
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from tests.factories import PASSWORD, make_member, token_for
from tests.tenants.test_two_factor import code_for

# Reset mails are queued by the request and sent by the worker: here, in place.
pytestmark = pytest.mark.usefixtures("tasks_run_inline")

LOGIN = "/accounts/login/"
CODE = "/accounts/login/code/"
SETUP = "/accounts/two-factor/setup/"
NEW_PASSWORD = "Tangerine-Violin-Orbit-93"


@pytest.fixture
def device(owner) -> TOTPDevice:
    return TOTPDevice.objects.create(user=owner, name="phone", confirmed=True)


def password_only_session(user) -> Client:
    """A session signed in with the password alone: one opened before two-factor was turned on."""
    client = Client()
    client.force_login(user)
    return client


# --- two-factor ---------------------------------------------------------------------------------------


def test_a_session_not_verified_by_two_factor_cannot_replace_the_authenticator(owner, clinic, device):
    # A session opened before two-factor was turned on (a stolen one, say) must not swap in its own
    # authenticator: that would take over the second factor and lock the owner out of it.
    thief = password_only_session(owner)

    page = thief.get(SETUP)
    pending = TOTPDevice.objects.filter(user=owner, confirmed=False).first()
    confirm = thief.post(SETUP, {"code": code_for(pending)}) if pending else None

    assert page.status_code == HTTPStatus.FOUND and page["Location"].startswith("/accounts/two-factor/?")
    assert confirm is None
    assert list(TOTPDevice.objects.filter(user=owner, confirmed=True)) == [device]


def test_clinic_requiring_two_factor_cannot_be_passed_by_setting_up_a_new_authenticator(owner, clinic, device):
    clinic.require_two_factor = True
    clinic.save()
    thief = password_only_session(owner)

    thief.get(SETUP)
    pending = TOTPDevice.objects.filter(user=owner, confirmed=False).first()
    if pending is not None:
        thief.post(SETUP, {"code": code_for(pending)})

    assert thief.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.FOUND
    assert thief.get(f"/api/v1/clinics/{clinic.slug}/studies/").status_code == HTTPStatus.FORBIDDEN


def test_a_verified_session_may_still_replace_the_authenticator(client, owner, clinic, device, settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    client.post(CODE, {"code": code_for(device)})

    page = client.get(SETUP)
    pending = TOTPDevice.objects.get(user=owner, confirmed=False)
    confirm = client.post(SETUP, {"code": code_for(pending)})

    assert page.status_code == HTTPStatus.OK
    assert confirm.status_code == HTTPStatus.FOUND
    assert list(TOTPDevice.objects.filter(user=owner, confirmed=True)) == [pending]


def test_the_second_factor_cannot_be_brute_forced(client, owner, clinic, device):
    # django-otp's own throttle (doubling waits) stands between a guesser who has the password and the code.
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    for offset in range(10, 15):
        client.post(CODE, {"code": code_for(device, offset=offset)})

    right = client.post(CODE, {"code": code_for(device)})

    assert right.status_code == HTTPStatus.BAD_REQUEST
    assert "Too many wrong codes" in right.content.decode()
    assert "_auth_user_id" not in client.session


def test_an_account_locked_after_its_password_step_is_not_signed_in_by_its_code(client, owner, clinic, device):
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    for _ in range(5):  # meanwhile, wrong passwords from elsewhere lock the account
        Client().post(LOGIN, {"username": owner.email, "password": "Wrong-password-1!"})

    response = client.post(CODE, {"code": code_for(device)})

    assert response.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert "_auth_user_id" not in client.session


def test_a_password_reset_leaves_two_factor_on(client, owner, clinic, device):
    client.post("/accounts/password/reset/", {"email": owner.email})
    link = re.search(r"http://\S+/accounts/password/reset/\S+/", mail.outbox[-1].body).group(0)
    form = client.get(link)["Location"]
    client.post(form, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})

    response = client.post(LOGIN, {"username": owner.email, "password": NEW_PASSWORD})

    assert response["Location"] == CODE
    assert "_auth_user_id" not in client.session


# --- lockout ------------------------------------------------------------------------------------------


def test_lockout_counts_an_email_with_whitespace_and_case_as_the_same_account(client, owner, clinic):
    for variant in (f" {owner.email}", f"{owner.email} ", owner.email.upper(), f"\t{owner.email.title()}"):
        Client().post(LOGIN, {"username": variant, "password": "Wrong-password-1!"})
    Client().post(LOGIN, {"username": owner.email, "password": "Wrong-password-1!"})

    response = client.post(LOGIN, {"username": f"  {owner.email.upper()} ", "password": PASSWORD})

    assert response.status_code == HTTPStatus.TOO_MANY_REQUESTS


def test_wrong_old_passwords_on_the_change_form_count_toward_the_lockout(client, owner, clinic):
    # A stolen session must not give unlimited guesses at the account's password.
    client.force_login(owner)
    for _ in range(5):
        client.post("/accounts/password/change/", {
            "old_password": "Wrong-password-1!", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD,
        })

    right = client.post("/accounts/password/change/", {
        "old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD,
    })
    sign_in = Client().post(LOGIN, {"username": owner.email, "password": PASSWORD})

    owner.refresh_from_db()
    assert owner.check_password(PASSWORD)
    assert right.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert "this account is locked" in right.content.decode()
    assert sign_in.status_code == HTTPStatus.TOO_MANY_REQUESTS


def test_a_right_old_password_on_the_change_form_still_works(client, owner, clinic):
    client.force_login(owner)

    response = client.post("/accounts/password/change/", {
        "old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD,
    })

    owner.refresh_from_db()
    assert response.status_code == HTTPStatus.FOUND
    assert owner.check_password(NEW_PASSWORD)


# --- password reset -----------------------------------------------------------------------------------


def test_a_reset_link_dies_when_the_password_is_changed(client, owner, clinic):
    client.post("/accounts/password/reset/", {"email": owner.email})
    link = re.search(r"http://\S+/accounts/password/reset/\S+/", mail.outbox[-1].body).group(0)
    owner.set_password(NEW_PASSWORD)
    owner.save()

    response = client.get(link, follow=True)

    assert "new_password1" not in response.content.decode()


def test_reset_form_says_the_same_for_an_inactive_account(client, owner, clinic):
    owner.is_active = False
    owner.save()

    response = client.post("/accounts/password/reset/", {"email": owner.email})

    assert response.status_code == HTTPStatus.FOUND
    assert mail.outbox == []


def test_a_reset_link_sent_before_deactivation_cannot_set_the_password(client, owner, clinic):
    # Otherwise whoever holds an old link sets the password of a disabled account (and lifts its
    # lockout), and owns it if the account is ever enabled again.
    client.post("/accounts/password/reset/", {"email": owner.email})
    link = re.search(r"http://\S+/accounts/password/reset/\S+/", mail.outbox[-1].body).group(0)
    owner.is_active = False
    owner.save()

    form = client.get(link, follow=True)
    client.post(form.redirect_chain[-1][0] if form.redirect_chain else link,
                {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})

    owner.refresh_from_db()
    assert "new_password1" not in form.content.decode()
    assert owner.check_password(PASSWORD)


# --- sessions -----------------------------------------------------------------------------------------


def test_a_deactivated_account_loses_its_session(client, owner, clinic):
    client.force_login(owner)
    owner.is_active = False
    owner.save()

    # Django's get_user() answers an anonymous user for an inactive account on the next request.
    assert client.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.FOUND
    assert client.get("/accounts/account/").status_code == HTTPStatus.FOUND


def test_a_removed_member_loses_the_clinic_at_once(client, owner, clinic):
    member = make_member(clinic=clinic)
    client.force_login(member)
    assert client.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.OK

    Client().force_login(owner)
    member.memberships.all().delete()

    assert client.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.NOT_FOUND


def test_an_api_token_header_does_not_keep_an_idle_session_alive(client, owner, clinic, settings):
    # Any valid token (the caller's own clinic's) with a stolen idle session cookie must not reopen
    # the session's pages.
    client.force_login(owner)
    session = client.session
    session["last_seen_at"] = time.time() - 16 * 60
    session.save()
    secret = token_for(clinic)

    response = client.get("/accounts/account/", HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert response.status_code != HTTPStatus.OK
    assert client.get("/accounts/account/").status_code == HTTPStatus.FOUND


def test_a_token_sent_with_an_expired_session_cookie_still_speaks_for_itself(client, owner, clinic):
    # A script's HTTP session may carry an old portal cookie: its token is what authenticates it.
    client.force_login(owner)
    session = client.session
    session["last_seen_at"] = time.time() - 16 * 60
    session.save()
    secret = token_for(clinic)

    response = client.get(f"/dicomweb/{clinic.slug}/studies", HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert response.status_code in (HTTPStatus.OK, HTTPStatus.NO_CONTENT)
    assert client.get("/accounts/account/").status_code == HTTPStatus.FOUND


def test_token_requests_do_not_count_as_the_sessions_activity(client, owner, clinic):
    client.force_login(owner)
    session = client.session
    last_seen = time.time() - 10 * 60
    session["last_seen_at"] = last_seen
    session.save()
    secret = token_for(clinic)

    client.get(f"/dicomweb/{clinic.slug}/studies", HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert client.session["last_seen_at"] == last_seen


# --- CSRF and headers ---------------------------------------------------------------------------------


def test_state_changing_account_pages_refuse_a_post_without_the_csrf_token(owner, clinic):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    paths = [
        "/accounts/logout/", "/accounts/logout/everywhere/", SETUP, "/accounts/two-factor/disable/",
        "/accounts/two-factor/recovery-codes/", "/accounts/password/change/", "/accounts/switch/",
        f"/c/{clinic.slug}/members/invite/", f"/c/{clinic.slug}/security/", f"/c/{clinic.slug}/tokens/",
        "/accounts/signup/", LOGIN, "/accounts/password/reset/",
    ]
    answers = {path: browser.post(path, {}).status_code for path in paths}

    assert answers == {path: HTTPStatus.FORBIDDEN for path in paths}


def test_security_headers_on_sign_in_and_clinic_pages(client, owner, clinic, settings):
    settings.SECURE_HSTS_SECONDS = 31536000
    settings.SECURE_SSL_REDIRECT = False
    sign_in = client.get(LOGIN, secure=True)
    client.force_login(owner)
    page = client.get(f"/c/{clinic.slug}/", secure=True)

    for response in (sign_in, page):
        assert response["X-Frame-Options"] == "DENY"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in response["Content-Security-Policy"]
        assert "max-age=31536000" in response["Strict-Transport-Security"]


def test_reset_mails_to_one_address_are_limited_and_the_page_answers_the_same(client, owner):
    answers = [client.post("/accounts/password/reset/", {"email": owner.email.upper()}) for _ in range(5)]

    assert len(mail.outbox) == 3
    assert {(a.status_code, a["Location"]) for a in answers} == {(HTTPStatus.FOUND, "/accounts/password/reset/sent/")}

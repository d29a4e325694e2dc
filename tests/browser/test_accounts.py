"""Accounts in Chromium: sign-up, sign-in, password rules, lockout, idle expiry, invitations."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail

from tenants.models import Clinic, Membership, User
from tenants.roles import Role
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser

STRONG = "Amber-Falcon-61!"


def _sign_up(page, email: str, slug: str = "seaside") -> None:
    page.goto("/accounts/signup/")
    page.fill("#id_clinic_name", "Seaside Radiology")
    page.fill("#id_clinic_slug", slug)
    page.fill("#id_full_name", "Sam Seaside")
    page.fill("#id_email", email)
    page.fill("#id_password1", STRONG)
    page.fill("#id_password2", STRONG)
    page.click("button[type=submit]")


def test_sign_up_creates_a_clinic_and_lands_on_its_dashboard(page, db):
    _sign_up(page, "sam@seaside.example")
    assert "Check your e-mail" in page.text_content("h1")
    link = re.search(r"https?://\S+/accounts/signup/confirm/\S+/", mail.outbox[0].body).group(0)

    page.goto(link)
    page.click("text=Confirm and open my clinic")

    page.wait_for_url(re.compile(r"/c/seaside/$"))
    assert "Seaside Radiology" in page.text_content("h1")
    assert Membership.objects.get(user__email="sam@seaside.example").role == Role.OWNER


def test_sign_up_with_a_taken_address_says_the_same_and_mails_its_owner(page, owner):
    _sign_up(page, owner.email)

    assert "Check your e-mail" in page.text_content("h1")
    assert "already" not in page.text_content("h1")
    assert mail.outbox[0].to == [owner.email]
    assert "already has an account" in mail.outbox[0].body
    assert not Clinic.objects.filter(slug="seaside").exists()


def test_weak_password_is_rejected_showing_each_failed_rule(page, db):
    page.goto("/accounts/signup/")
    page.fill("#id_clinic_name", "Weak Clinic")
    page.fill("#id_clinic_slug", "weak")
    page.fill("#id_full_name", "Wendy Weak")
    page.fill("#id_email", "wendy@weak.example")
    page.fill("#id_password1", "password")
    page.fill("#id_password2", "password")
    page.click("button[type=submit]")

    errors = page.locator(".errorlist").all_text_contents()
    text = " ".join(errors)
    assert "at least 12 characters" in text
    assert "too common" in text
    assert "an upper-case letter" in text
    assert "a digit" in text
    assert "a special character" in text
    assert not User.objects.exists()
    assert not Clinic.objects.exists()


def test_login_shows_the_clinic_dashboard(page, sign_in, owner, clinic):
    sign_in(owner)

    page.wait_for_url(re.compile(rf"/c/{clinic.slug}/$"))
    assert page.text_content("h1") == "Clinic A"
    assert page.is_visible("text=Members")


def test_wrong_password_then_lockout_after_five_failures(page, owner, clinic):
    page.goto("/accounts/login/")
    for attempt in range(5):
        page.fill("#id_username", owner.email)
        page.fill("#id_password", f"Wrong-password-{attempt}!")
        with page.expect_navigation():
            page.click("button[type=submit]")
        if attempt == 0:
            assert "not correct" in page.text_content(".banner.error")
    locked_text = page.text_content(".banner.error")

    page.fill("#id_username", owner.email)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("button[type=submit]")

    assert "locked for 30 minutes" in locked_text
    assert "locked for 30 minutes" in page.text_content(".banner.error")
    assert "/accounts/login/" in page.url


def test_idle_session_warns_then_ends_at_the_login_page(page, sign_in, owner, clinic, settings):
    settings.SESSION_IDLE_TIMEOUT = timedelta(seconds=3)
    sign_in(owner)
    page.wait_for_url(re.compile(rf"/c/{clinic.slug}/$"))

    page.wait_for_selector("#session-warning:not([hidden])", timeout=3_000)
    page.wait_for_url(re.compile(r"/accounts/login/\?expired=1"), timeout=8_000)

    assert "Your session ended after a period of inactivity" in page.text_content("main")
    page.goto(f"/c/{clinic.slug}/")
    assert "/accounts/login/" in page.url


def test_invited_user_accepts_and_sees_only_their_clinic(page, browser, live_server, sign_in, owner, clinic, other_clinic):
    sign_in(owner)
    page.goto(f"/c/{clinic.slug}/members/")
    page.fill("#id_email", "nora@newcomer.example")
    page.select_option("#id_role", Role.CLINICIAN)
    page.click("text=Send invitation")
    page.wait_for_selector("text=Invitation sent to nora@newcomer.example")
    link = re.search(r"https?://\S+/accounts/invitations/\S+/", mail.outbox[-1].body).group(0)

    invitee = browser.new_context(base_url=live_server.url)
    try:
        second = invitee.new_page()
        second.goto(link)
        second.fill("#id_full_name", "Nora Newcomer")
        second.fill("#id_password1", STRONG)
        second.fill("#id_password2", STRONG)
        second.click("button[type=submit]")
        second.wait_for_url(re.compile(rf"/c/{clinic.slug}/$"))

        assert second.text_content("h1") == "Clinic A"
        assert second.locator("#clinic-switch").count() == 0
        assert not second.is_visible("text=Members")  # a clinician does not manage members
        response = second.goto(f"/c/{other_clinic.slug}/")
        assert response.status == 404
        assert "Clinic B" not in second.content()
    finally:
        invitee.close()


def test_two_factor_set_up_then_required_at_sign_in(page, sign_in, owner, clinic, settings):
    import base64

    from django_otp.oath import TOTP

    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    sign_in(owner)
    page.goto("/accounts/two-factor/setup/")
    assert page.locator(".qr svg").count() == 1
    secret = page.text_content("#totp-secret").strip()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    page.fill("#id_code", f"{TOTP(key).token():06d}")
    page.click("text=Turn on")
    page.wait_for_selector("text=Two-factor sign-in is on")
    with page.expect_navigation():
        page.click("text=Sign out")

    sign_in(owner)
    page.wait_for_url(re.compile(r"/accounts/login/code/$"))
    totp = TOTP(key)
    totp.time += 30  # the next code: the current one was used up by the set-up
    page.fill("#id_code", f"{totp.token():06d}")
    with page.expect_navigation():
        page.click("text=Verify")

    page.wait_for_url(re.compile(rf"/c/{clinic.slug}/$"))

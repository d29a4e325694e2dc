"""Two-factor sign-in: recovery codes (django-otp static tokens), replayed codes, throttling messages."""

from __future__ import annotations

import re
from http import HTTPStatus

import pytest
from django.test import Client
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from tenants.models import AuditEvent
from tests.factories import PASSWORD, make_user
from tests.tenants.test_two_factor import code_for

LOGIN = "/accounts/login/"
CODE = "/accounts/login/code/"
RECOVERY = "/accounts/two-factor/recovery-codes/"


@pytest.fixture(autouse=True)
def _no_otp_throttle_delay(settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0
    settings.OTP_STATIC_THROTTLE_FACTOR = 0


def enable_two_factor(client, user) -> tuple[TOTPDevice, str, list[str]]:
    """Set up an authenticator as the user would; return the device, the code used and the recovery codes."""
    client.force_login(user)
    client.get("/accounts/two-factor/setup/")
    pending = TOTPDevice.objects.get(user=user, confirmed=False)
    code = code_for(pending)
    done = client.post("/accounts/two-factor/setup/", {"code": code})
    page = client.get(done["Location"])
    codes = re.findall(r'<li class="recovery-code"><code>([a-z2-7]{4}-[a-z2-7]{4})</code></li>', page.content.decode())
    return TOTPDevice.objects.get(user=user, confirmed=True), code, codes


def sign_in_with(client, user, code: str):
    client.post("/accounts/logout/")
    client.post(LOGIN, {"username": user.email, "password": PASSWORD})
    return client.post(CODE, {"code": code})


def test_enabling_two_factor_shows_ten_recovery_codes_once(client, owner, clinic):
    device, _, codes = enable_two_factor(client, owner)

    again = client.get(RECOVERY)

    assert len(codes) == 10 and len(set(codes)) == 10
    assert StaticToken.objects.filter(device__user=owner).count() == 10
    assert not any(code in again.content.decode() for code in codes)
    assert AuditEvent.objects.for_clinic(clinic).filter(action="auth.recovery_codes_generated").count() == 1


def test_a_recovery_code_signs_in_once_and_is_audited(client, owner, clinic):
    _, _, codes = enable_two_factor(client, owner)

    first = sign_in_with(client, owner, codes[0].upper().replace("-", " "))
    second = sign_in_with(client, owner, codes[0])

    assert first.status_code == HTTPStatus.FOUND
    assert second.status_code == HTTPStatus.BAD_REQUEST
    assert StaticToken.objects.filter(device__user=owner).count() == 9
    used = AuditEvent.objects.for_clinic(clinic).get(action="auth.recovery_code_used")
    assert used.details == {"remaining": 9}
    assert codes[0] not in str(used.details)


def test_another_users_recovery_code_does_not_sign_in(client, owner, clinic):
    _, _, codes = enable_two_factor(client, owner)
    other = make_user(email="other@clinic-a.example")
    enable_two_factor(client, other)

    response = sign_in_with(client, other, codes[0])

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert StaticToken.objects.filter(device__user=owner).count() == 10


def test_regenerating_recovery_codes_replaces_the_old_ones(client, owner, clinic):
    _, _, old = enable_two_factor(client, owner)

    response = client.post(RECOVERY)

    new = re.findall(r'<li class="recovery-code"><code>([a-z2-7]{4}-[a-z2-7]{4})</code></li>', response.content.decode())
    assert response.status_code == HTTPStatus.OK and len(new) == 10 and not set(new) & set(old)
    assert sign_in_with(client, owner, old[1]).status_code == HTTPStatus.BAD_REQUEST
    assert sign_in_with(client, owner, new[1]).status_code == HTTPStatus.FOUND
    assert AuditEvent.objects.for_clinic(clinic).filter(action="auth.recovery_codes_generated").count() == 2


def test_regenerating_needs_a_session_verified_by_two_factor(client, owner, clinic):
    enable_two_factor(client, owner)
    unverified = Client()
    unverified.force_login(owner)  # a session signed in without the second factor

    response = unverified.post(RECOVERY)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert StaticToken.objects.filter(device__user=owner).count() == 10


def test_the_code_that_enabled_two_factor_is_refused_as_just_used_and_not_counted(client, owner, clinic):
    device, code, _ = enable_two_factor(client, owner)

    response = sign_in_with(client, owner, code)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    text = response.content.decode()
    assert "This code was just used" in text and "wait for the next one" in text
    assert "not right" not in text
    device.refresh_from_db()
    assert device.throttling_failure_count == 0
    assert sign_in_with(client, owner, code_for(device, offset=1)).status_code == HTTPStatus.FOUND


def test_wrong_codes_count_toward_the_throttle_and_say_how_long_to_wait(client, owner, clinic, settings):
    device, _, _ = enable_two_factor(client, owner)
    settings.OTP_TOTP_THROTTLE_FACTOR = 60

    wrong = sign_in_with(client, owner, code_for(device, offset=10))
    throttled = client.post(CODE, {"code": code_for(device, offset=1)})

    assert "not right" in wrong.content.decode()
    assert throttled.status_code == HTTPStatus.BAD_REQUEST
    assert "Too many wrong codes" in throttled.content.decode()
    device.refresh_from_db()
    assert device.throttling_failure_count == 1

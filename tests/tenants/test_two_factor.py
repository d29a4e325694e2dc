from __future__ import annotations

import base64
import re
from http import HTTPStatus

import pytest
from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from tenants.models import AuditEvent
from tests.factories import PASSWORD

LOGIN = "/accounts/login/"


def code_for(device: TOTPDevice, offset: int = 0) -> str:
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits)
    totp.time += offset * device.step
    return f"{totp.token():0{device.digits}d}"


@pytest.fixture
def device(owner) -> TOTPDevice:
    return TOTPDevice.objects.create(user=owner, name="phone", confirmed=True)


@pytest.fixture(autouse=True)
def _no_otp_throttle(settings):
    settings.OTP_TOTP_THROTTLE_FACTOR = 0


def test_setup_page_shows_inline_svg_qr_and_secret(client, owner, clinic):
    client.force_login(owner)

    response = client.get("/accounts/two-factor/setup/")

    text = response.content.decode()
    assert response.status_code == HTTPStatus.OK
    assert "<svg" in text
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', text).group(1)
    pending = TOTPDevice.objects.get(user=owner, confirmed=False)
    assert secret == base64.b32encode(pending.bin_key).decode().rstrip("=")
    assert "http" not in re.search(r"<svg.*?</svg>", text, re.S).group(0).replace("http://www.w3.org", "")


def test_setup_is_confirmed_with_a_code_and_audited(client, owner, clinic):
    client.force_login(owner)
    client.get("/accounts/two-factor/setup/")
    pending = TOTPDevice.objects.get(user=owner)

    response = client.post("/accounts/two-factor/setup/", {"code": code_for(pending)})

    assert response.status_code == HTTPStatus.FOUND
    assert TOTPDevice.objects.get(user=owner).confirmed
    assert AuditEvent.objects.for_clinic(clinic).filter(action="auth.two_factor_enabled").exists()


def test_setup_with_wrong_code_keeps_two_factor_off(client, owner, clinic):
    client.force_login(owner)
    client.get("/accounts/two-factor/setup/")

    response = client.post("/accounts/two-factor/setup/", {"code": "000000"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "not right" in response.content.decode()
    assert not TOTPDevice.objects.filter(user=owner, confirmed=True).exists()


def test_setup_rejects_a_code_that_is_not_digits(client, owner, clinic):
    client.force_login(owner)
    client.get("/accounts/two-factor/setup/")

    response = client.post("/accounts/two-factor/setup/", {"code": "abcdef"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "6-digit code" in response.content.decode()


def test_login_asks_for_the_code_when_the_user_has_a_device(client, owner, clinic, device):
    response = client.post(LOGIN, {"username": owner.email, "password": PASSWORD})

    assert response["Location"] == "/accounts/login/code/"
    assert "_auth_user_id" not in client.session
    assert client.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.FOUND


def test_login_with_right_code_signs_in_verified(client, owner, clinic, device):
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})

    response = client.post("/accounts/login/code/", {"code": code_for(device)})

    assert response.status_code == HTTPStatus.FOUND
    assert client.session["_auth_user_id"] == str(owner.pk)
    assert client.session["otp_device_id"] == device.persistent_id


def test_login_with_wrong_code_does_not_sign_in_and_is_audited(client, owner, clinic, device):
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})

    response = client.post("/accounts/login/code/", {"code": code_for(device, offset=10)})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "_auth_user_id" not in client.session
    event = AuditEvent.objects.for_clinic(clinic).filter(action="auth.login_failed").get()
    assert event.details["reason"] == "wrong two-factor code"


def test_code_page_without_password_step_goes_back_to_login(client, owner, clinic, device):
    response = client.post("/accounts/login/code/", {"code": code_for(device)})

    assert response["Location"] == LOGIN
    assert "_auth_user_id" not in client.session


def test_clinic_requiring_two_factor_sends_unverified_member_to_set_it_up(client, owner, clinic):
    clinic.require_two_factor = True
    clinic.save()
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})

    page = client.get(f"/c/{clinic.slug}/")
    step = client.get(page["Location"])

    assert page["Location"].startswith("/accounts/two-factor/?next=")
    assert step["Location"].startswith("/accounts/two-factor/setup/?next=")
    client.get(step["Location"])
    pending = TOTPDevice.objects.get(user=owner)
    done = client.post(step["Location"], {"code": code_for(pending)})
    # The recovery codes are shown once on the way, with a link on to where the member was going.
    assert done["Location"].startswith("/accounts/two-factor/recovery-codes/?next=")
    assert f'href="/c/{clinic.slug}/"' in client.get(done["Location"]).content.decode()
    assert client.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.OK


def test_clinic_requiring_two_factor_asks_member_with_device_for_code(client, owner, clinic, device):
    clinic.require_two_factor = True
    clinic.save()
    client.force_login(owner)  # e.g. a session from before the clinic required it

    page = client.get(f"/c/{clinic.slug}/")
    wrong = client.post(page["Location"], {"code": code_for(device, offset=10)})
    right = client.post(page["Location"], {"code": code_for(device)})

    assert wrong.status_code == HTTPStatus.BAD_REQUEST
    assert right["Location"] == f"/c/{clinic.slug}/"
    assert client.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.OK


def test_two_factor_can_be_turned_off_with_a_code(client, owner, clinic, device):
    client.force_login(owner)

    client.post("/accounts/two-factor/disable/", {"code": code_for(device)})

    assert not TOTPDevice.objects.filter(user=owner).exists()
    assert AuditEvent.objects.for_clinic(clinic).filter(action="auth.two_factor_disabled").exists()


def test_two_factor_cannot_be_turned_off_when_a_clinic_requires_it(client, owner, clinic, device):
    clinic.require_two_factor = True
    clinic.save()
    client.force_login(owner)

    response = client.post("/accounts/two-factor/disable/", {"code": code_for(device)}, follow=True)

    assert TOTPDevice.objects.filter(user=owner).exists()
    assert "requires two-factor sign-in" in response.content.decode()


def test_two_factor_redirect_keeps_a_query_string_intact(client, owner, clinic, device):
    clinic.require_two_factor = True
    clinic.save()
    client.force_login(owner)

    page = client.get(f"/c/{clinic.slug}/?a=1&b=2")
    done = client.post(page["Location"], {"code": code_for(device)})

    assert done["Location"] == f"/c/{clinic.slug}/?a=1&b=2"

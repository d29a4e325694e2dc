from __future__ import annotations

import re
import time
from datetime import timedelta
from http import HTTPStatus

from django.contrib.sessions.models import Session
from django.test import Client

from tenants.models import AuditEvent, UserSession
from tests.factories import PASSWORD, make_clinic

LOGIN = "/accounts/login/"


def fail(client, email: str):
    return client.post(LOGIN, {"username": email, "password": "Wrong-password-1!"})


def test_login_with_wrong_password_says_so_without_signing_in(client, owner, clinic):
    response = fail(client, owner.email)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "The e-mail address or password is not correct." in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_login_matches_email_case_insensitively(client, owner, clinic):
    response = client.post(LOGIN, {"username": owner.email.upper(), "password": PASSWORD})

    assert response.status_code == HTTPStatus.FOUND
    assert client.session["_auth_user_id"] == str(owner.pk)


def test_login_redirects_only_to_safe_next(client, owner, clinic):
    response = client.post(LOGIN, {"username": owner.email, "password": PASSWORD, "next": "https://evil.example/"})

    assert response["Location"] == "/"


def test_login_rotates_the_session_key(client, owner, clinic):
    client.get(LOGIN)
    client.session.save()
    before = client.cookies["sessionid"].value

    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})

    assert client.cookies["sessionid"].value != before


def test_account_is_locked_after_five_failures_from_any_address(client, owner, clinic):
    for number in range(4):
        Client(REMOTE_ADDR=f"10.0.0.{number}").post(LOGIN, {"username": owner.email, "password": "Wrong-1!aaaaaa"})

    fifth = fail(client, owner.email)
    locked = client.post(LOGIN, {"username": owner.email, "password": PASSWORD})

    assert fifth.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert locked.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert "locked for 30 minutes" in locked.content.decode()
    assert "_auth_user_id" not in client.session


def test_lockout_page_is_the_same_for_unknown_accounts(client, owner, clinic):
    for _ in range(5):
        known = fail(client, owner.email)
        unknown = fail(client, "nobody@nowhere.example")

    assert unknown.status_code == known.status_code == HTTPStatus.TOO_MANY_REQUESTS
    known_banner = re.search(r'<p class="banner error" role="alert">(.*?)</p>', known.content.decode()).group(1)
    unknown_banner = re.search(r'<p class="banner error" role="alert">(.*?)</p>', unknown.content.decode()).group(1)
    assert known_banner == unknown_banner
    assert "locked for 30 minutes" in unknown_banner


def test_lockout_counts_email_case_insensitively(client, owner, clinic):
    for email in [owner.email, owner.email.upper(), owner.email.title(), owner.email, owner.email.upper()]:
        response = fail(client, email)

    assert response.status_code == HTTPStatus.TOO_MANY_REQUESTS


def test_lockout_ends_after_the_cool_off(client, owner, clinic, settings):
    settings.AXES_COOLOFF_TIME = timedelta(seconds=1)
    for _ in range(5):
        fail(client, owner.email)
    time.sleep(1.2)

    response = client.post(LOGIN, {"username": owner.email, "password": PASSWORD})

    assert response.status_code == HTTPStatus.FOUND


def test_login_success_failure_and_lockout_are_audited_in_the_users_clinics(client, owner, clinic):
    second = make_clinic(owner=owner)
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    client.post("/accounts/logout/")
    for _ in range(5):
        fail(client, owner.email)

    for each in (clinic, second):
        actions = list(AuditEvent.objects.for_clinic(each).values_list("action", flat=True))
        assert actions.count("auth.login") == 1
        assert actions.count("auth.logout") == 1
        assert actions.count("auth.login_failed") == 5
        assert actions.count("auth.locked_out") == 1
    failed = AuditEvent.objects.for_clinic(clinic).filter(action="auth.login_failed").first()
    assert failed.result == "failure"
    assert failed.actor == owner


def test_failed_login_for_unknown_account_goes_to_the_global_chain(client, db):
    fail(client, "nobody@nowhere.example")

    event = AuditEvent.objects.get()
    assert event.clinic is None
    assert event.action == "auth.login_failed"
    assert event.actor_label == "anonymous"


def test_idle_limit_is_the_shortest_of_site_and_clinics(client, owner, clinic, settings):
    settings.SESSION_IDLE_TIMEOUT = timedelta(minutes=15)
    clinic.session_idle_minutes = 5
    clinic.save()

    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})

    assert client.session["idle_seconds"] == 300
    assert b'data-idle-seconds="300"' in client.get(f"/c/{clinic.slug}/").content


def test_idle_session_ends_and_redirects_to_login(client, owner, clinic, settings):
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    session = client.session
    session["last_seen_at"] = time.time() - 16 * 60
    session.save()
    key = session.session_key

    response = client.get(f"/c/{clinic.slug}/")

    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"].startswith("/accounts/login/?expired=1")
    assert not Session.objects.filter(session_key=key).exists()
    assert AuditEvent.objects.for_clinic(clinic).filter(action="auth.session_expired").exists()


def test_logout_deletes_the_server_side_session(client, owner, clinic):
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    key = client.session.session_key
    stolen = Client()
    stolen.cookies["sessionid"] = key

    client.post("/accounts/logout/")

    assert not Session.objects.filter(session_key=key).exists()
    assert not UserSession.objects.exists()
    assert stolen.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.FOUND


def test_logout_requires_post(client, owner, clinic):
    client.force_login(owner)

    response = client.get("/accounts/logout/")

    assert response.status_code == HTTPStatus.METHOD_NOT_ALLOWED
    assert "_auth_user_id" in client.session


def test_sign_out_everywhere_ends_every_session_of_the_user(owner, admin, clinic):
    laptop, phone, colleague = Client(), Client(), Client()
    laptop.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    phone.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    colleague.post(LOGIN, {"username": admin.email, "password": PASSWORD})
    assert b'id="session-count">2<' in laptop.get("/accounts/account/").content

    response = laptop.post("/accounts/logout/everywhere/")

    assert response.status_code == HTTPStatus.FOUND
    assert phone.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.FOUND
    assert laptop.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.FOUND
    assert colleague.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.OK
    assert AuditEvent.objects.for_clinic(clinic).filter(action="auth.logout_everywhere").exists()


def test_switching_clinic_goes_to_a_clinic_of_the_user_only(client, owner, clinic, other_clinic):
    second = make_clinic(owner=owner)
    client.force_login(owner)

    mine = client.get(f"/accounts/switch/?clinic={second.slug}")
    theirs = client.get(f"/accounts/switch/?clinic={other_clinic.slug}")

    assert mine["Location"] == f"/c/{second.slug}/"
    assert theirs["Location"] == "/"
    page = client.get(f"/c/{clinic.slug}/").content.decode()
    assert 'id="clinic-switch"' in page
    assert second.name in page
    assert other_clinic.name not in page


def test_empty_login_form_names_the_missing_fields(client, db):
    response = client.post(LOGIN, {"username": "", "password": ""})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.content.decode().count("This field is required") == 2
    assert not AuditEvent.objects.exists()


def test_session_cookie_ends_with_the_browser_and_is_http_only(client, owner, clinic):
    response = client.post(LOGIN, {"username": owner.email, "password": PASSWORD})

    cookie = response.cookies["sessionid"]
    assert cookie["expires"] == "" and cookie["max-age"] == ""
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"


def test_keepalive_restarts_the_idle_timer(client, owner, clinic):
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    session = client.session
    session["last_seen_at"] = time.time() - 14 * 60
    session.save()

    keepalive = client.get("/accounts/keepalive/")

    assert keepalive.status_code == HTTPStatus.NO_CONTENT
    assert time.time() - client.session["last_seen_at"] < 5
    assert client.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.OK


def test_absolute_limit_ends_even_an_active_session(client, owner, clinic):
    client.post(LOGIN, {"username": owner.email, "password": PASSWORD})
    session = client.session
    session["started_at"] = time.time() - 13 * 3600
    session.save()

    response = client.get(f"/c/{clinic.slug}/")

    assert response["Location"].startswith("/accounts/login/?expired=1")


def test_a_readers_requests_within_the_activity_resolution_do_not_write_the_session(client, owner, clinic):
    # Each write was a transaction of its own (on SQLite the database's write lock) for every
    # DICOMweb request of a viewer: dozens a second while a reader scrolls.
    client.force_login(owner)
    assert client.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.OK
    written = Session.objects.get().expire_date

    time.sleep(0.01)
    for path in (f"/c/{clinic.slug}/", f"/dicomweb/{clinic.slug}/studies"):
        assert client.get(path).status_code == HTTPStatus.OK

    assert Session.objects.get().expire_date == written

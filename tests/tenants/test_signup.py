from __future__ import annotations

import re
from http import HTTPStatus

from django.core import mail

from tenants.models import AuditEvent, Clinic, Membership, User
from tenants.roles import Role

STRONG = "Sunny-Harbour-73!"


def signup_data(**overrides: str) -> dict[str, str]:
    data = {
        "clinic_name": "Harbour Imaging", "clinic_slug": "harbour", "full_name": "Hanna Harbour",
        "email": "Hanna@Harbour.example", "password1": STRONG, "password2": STRONG,
    }
    data.update(overrides)
    return data


def confirm_link(message) -> str:
    return re.search(r"http://testserver(/accounts/signup/confirm/\S+/)", message.body).group(1)


def main_text(response) -> str:
    return re.search(r"<main.*</main>", response.content.decode(), re.S).group(0)


def test_signup_mails_a_confirmation_link_that_opens_the_clinic(client, db):
    response = client.post("/accounts/signup/", signup_data())
    assert response.status_code == HTTPStatus.OK
    assert "Check your e-mail" in response.content.decode()
    assert not User.objects.get().is_active
    assert client.get("/c/harbour/").status_code == HTTPStatus.FOUND  # not signed in yet
    (message,) = mail.outbox

    response = client.post(confirm_link(message))

    assert message.to == ["hanna@harbour.example"]
    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"] == "/c/harbour/"
    membership = Membership.objects.select_related("user", "clinic").get()
    assert membership.role == Role.OWNER
    assert membership.user.email == "hanna@harbour.example"
    assert membership.user.password.startswith("argon2")
    assert membership.clinic.name == "Harbour Imaging"
    assert client.get("/c/harbour/").status_code == HTTPStatus.OK


def test_signup_page_renders(client, db):
    response = client.get("/accounts/signup/")

    assert response.status_code == HTTPStatus.OK
    assert b"Clinic address" in response.content


def test_signup_with_weak_password_names_each_failed_rule_and_stores_nothing(client, db):
    response = client.post("/accounts/signup/", signup_data(password1="short", password2="short"))

    assert response.status_code == HTTPStatus.BAD_REQUEST
    text = response.content.decode()
    assert "at least 12 characters" in text
    assert "an upper-case letter" in text
    assert "a digit" in text
    assert "a special character" in text
    assert not User.objects.exists()
    assert not Clinic.objects.exists()


def test_signup_rejects_common_password(client, db):
    response = client.post("/accounts/signup/", signup_data(password1="John!20130605at1753", password2="John!20130605at1753"))

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "too common" in response.content.decode()
    assert not User.objects.exists()


def test_signup_rejects_password_similar_to_email(client, db):
    password = "Hanna@Harbour.example1"

    response = client.post("/accounts/signup/", signup_data(password1=password, password2=password))

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "too similar" in response.content.decode()
    assert not User.objects.exists()


def test_signup_rejects_differing_passwords(client, db):
    response = client.post("/accounts/signup/", signup_data(password2=STRONG + "x"))

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "The two passwords differ" in response.content.decode()
    assert not User.objects.exists()


def test_signup_rejects_taken_slug_and_stores_nothing(client, clinic):
    users_before = User.objects.count()

    response = client.post("/accounts/signup/", signup_data(clinic_slug=clinic.slug))

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "already taken" in response.content.decode()
    assert User.objects.count() == users_before
    assert Clinic.objects.count() == 1


def test_signup_with_an_existing_email_answers_generically_and_mails_the_owner(client, owner, clinic):
    new = client.post("/accounts/signup/", signup_data(email="someone-new@harbour.example", clinic_slug="harbour-2"))
    mail.outbox.clear()

    response = client.post("/accounts/signup/", signup_data(email=owner.email.upper()))

    assert response.status_code == HTTPStatus.OK
    assert main_text(response).replace(owner.email, "X") == main_text(new).replace("someone-new@harbour.example", "X")
    assert "already exists" not in response.content.decode()
    assert not Clinic.objects.filter(slug="harbour").exists()
    (message,) = mail.outbox
    assert message.to == [owner.email]
    assert "already has an account" in message.body
    assert "/accounts/password/reset/" in message.body
    owner.refresh_from_db()
    assert owner.is_active and owner.check_password("Correct-Horse-42!")


def test_confirmation_link_works_once(client, db):
    client.post("/accounts/signup/", signup_data())
    link = confirm_link(mail.outbox[0])
    client.post(link)
    client.logout()

    response = client.post(link)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "no longer works" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_opening_the_link_without_confirming_activates_nothing(client, db):
    client.post("/accounts/signup/", signup_data())

    response = client.get(confirm_link(mail.outbox[0]))

    assert response.status_code == HTTPStatus.OK
    assert not User.objects.get().is_active


def test_tampered_confirmation_link_is_refused(client, db):
    client.post("/accounts/signup/", signup_data())

    response = client.post(confirm_link(mail.outbox[0])[:-3] + "xx/")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not User.objects.get().is_active


def test_signing_up_again_before_confirming_mails_the_link_again(client, db):
    client.post("/accounts/signup/", signup_data())

    client.post("/accounts/signup/", signup_data(clinic_slug="harbour-again"))

    assert len(mail.outbox) == 2
    assert "Finish creating" in mail.outbox[1].subject
    assert Clinic.objects.count() == 1


def test_signup_rejects_bad_slug_and_missing_fields(client, db):
    response = client.post("/accounts/signup/", signup_data(clinic_slug="Bad Slug!", full_name="", email="nope"))

    assert response.status_code == HTTPStatus.BAD_REQUEST
    text = response.content.decode()
    assert "lower-case letters, digits or hyphens" in text
    assert "This field is required" in text
    assert "valid email address" in text
    assert not User.objects.exists()


def test_signup_rejects_clashing_ae_title_and_stores_nothing(client, db):
    from tests.factories import make_clinic

    make_clinic(slug="harbour-radiology-north")  # AE title HARBOUR-RADIOLOG
    users_before = User.objects.count()

    response = client.post("/accounts/signup/", signup_data(clinic_slug="harbour-radiology-south"))

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert User.objects.count() == users_before


def test_signup_is_audited_in_the_new_clinic(client, db):
    client.post("/accounts/signup/", signup_data())
    client.post(confirm_link(mail.outbox[0]))

    actions = set(AuditEvent.objects.for_clinic(Clinic.objects.get()).values_list("action", flat=True))
    assert {"clinic.created", "auth.login"} <= actions


def test_production_hashes_passwords_with_argon2():
    # The tests swap in a cheaper Argon2 (tests/hashers.py); the project's own setting must be Argon2.
    import portal.settings

    assert portal.settings.PASSWORD_HASHERS[0] == "django.contrib.auth.hashers.Argon2PasswordHasher"


def test_signup_rejects_an_easily_guessed_password_that_meets_every_rule(client, db):
    response = client.post("/accounts/signup/", signup_data(password1="Password1234!", password2="Password1234!"))

    assert response.status_code == HTTPStatus.BAD_REQUEST
    text = response.content.decode()
    assert "too easy to guess" in text
    assert "similar to a commonly used password" in text
    assert not User.objects.exists()


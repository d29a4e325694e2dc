from __future__ import annotations

import re
from datetime import timedelta
from http import HTTPStatus

from django.core import mail
from django.test import Client
from django.utils import timezone

from tenants.models import AuditEvent, Invitation, Membership, User
from tenants.roles import Role

NEW_PASSWORD = "Quiet-Meadow-58?"


def invite(client, clinic, email="new.doctor@example.org", role=Role.CLINICIAN):
    return client.post(f"/c/{clinic.slug}/members/invite/", {"email": email, "role": role})


def invitation_link() -> str:
    return re.search(r"http://testserver(/accounts/invitations/\S+/)", mail.outbox[-1].body).group(1)


def test_owner_invites_by_email_with_a_single_use_link(client, owner, clinic):
    client.force_login(owner)

    response = invite(client, clinic)

    assert response.status_code == HTTPStatus.FOUND
    invitation = Invitation.objects.for_clinic(clinic).get()
    assert invitation.email == "new.doctor@example.org"
    assert invitation.role == Role.CLINICIAN
    assert mail.outbox[0].to == ["new.doctor@example.org"]
    assert "Clinic A" in mail.outbox[0].subject
    token = invitation_link().rstrip("/").rsplit("/", 1)[1]
    assert token not in invitation.token_hash  # only a hash is stored
    assert AuditEvent.objects.for_clinic(clinic).filter(action="invitation.sent").exists()


def test_new_user_accepts_invitation_creating_an_account(client, owner, clinic):
    client.force_login(owner)
    invite(client, clinic)
    link = invitation_link()
    newcomer = Client()

    page = newcomer.get(link)
    response = newcomer.post(link, {"full_name": "Nina New", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})

    assert page.status_code == HTTPStatus.OK
    assert response["Location"] == f"/c/{clinic.slug}/"
    user = User.objects.get(email="new.doctor@example.org")
    assert Membership.objects.for_clinic(clinic).get(user=user).role == Role.CLINICIAN
    assert newcomer.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.OK
    assert AuditEvent.objects.for_clinic(clinic).filter(action="invitation.accepted", actor=user).exists()


def test_invitation_link_works_only_once(client, owner, clinic):
    client.force_login(owner)
    invite(client, clinic)
    link = invitation_link()
    Client().post(link, {"full_name": "Nina New", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})

    again = Client().post(link, {"full_name": "Mallory", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})

    assert again.status_code == HTTPStatus.GONE
    assert "already been used" in again.content.decode()
    assert Membership.objects.for_clinic(clinic).count() == 2


def test_expired_invitation_is_refused(client, owner, clinic):
    client.force_login(owner)
    invite(client, clinic)
    Invitation.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    response = Client().post(invitation_link(), {"full_name": "N", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})

    assert response.status_code == HTTPStatus.GONE
    assert not User.objects.filter(email="new.doctor@example.org").exists()


def test_invitation_expiry_follows_the_setting(client, owner, clinic, settings):
    settings.INVITATION_VALID_DAYS = 2
    client.force_login(owner)

    invite(client, clinic)

    invitation = Invitation.objects.get()
    assert timedelta(days=1, hours=23) < invitation.expires_at - timezone.now() <= timedelta(days=2)


def test_unknown_invitation_token_is_404(client, db):
    assert client.get("/accounts/invitations/not-a-token/").status_code == HTTPStatus.NOT_FOUND


def test_invitation_accept_with_weak_password_names_rules_and_stores_nothing(client, owner, clinic):
    client.force_login(owner)
    invite(client, clinic)

    response = Client().post(invitation_link(), {"full_name": "Nina New", "password1": "weakpass", "password2": "weakpass"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "at least 12 characters" in response.content.decode()
    assert not User.objects.filter(email="new.doctor@example.org").exists()
    assert Invitation.objects.get().accepted_at is None


def test_existing_signed_in_user_accepts_and_joins_a_second_clinic(client, owner, clinic, outsider):
    client.force_login(owner)
    invite(client, clinic, email=outsider.email, role=Role.UPLOADER)
    link = invitation_link()
    other = Client()
    other.force_login(outsider)

    response = other.post(link)

    assert response["Location"] == f"/c/{clinic.slug}/"
    assert Membership.objects.for_clinic(clinic).get(user=outsider).role == Role.UPLOADER
    assert Membership.objects.filter(user=outsider).count() == 2


def test_existing_account_must_sign_in_to_accept(client, owner, clinic, outsider):
    client.force_login(owner)
    invite(client, clinic, email=outsider.email)

    page = Client().get(invitation_link())

    assert "Sign in to accept" in page.content.decode()


def test_invitation_for_another_address_is_refused_to_a_signed_in_user(client, owner, clinic, outsider):
    client.force_login(owner)
    invite(client, clinic, email="someone.else@example.org")
    other = Client()
    other.force_login(outsider)

    response = other.post(invitation_link())

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not Membership.objects.for_clinic(clinic).filter(user=outsider).exists()
    assert Invitation.objects.get().accepted_at is None


def test_inviting_an_existing_member_is_refused(client, owner, admin, clinic):
    client.force_login(owner)

    response = invite(client, clinic, email=admin.email.upper())

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "already a member" in response.content.decode()
    assert not Invitation.objects.exists()
    assert not mail.outbox


def test_invitation_with_bad_email_or_role_stores_nothing(client, owner, clinic):
    client.force_login(owner)

    response = invite(client, clinic, email="not-an-email", role="emperor")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "valid email address" in response.content.decode()
    assert not Invitation.objects.exists()


def test_admin_cannot_invite_an_owner(client, admin, clinic):
    client.force_login(admin)

    response = invite(client, clinic, role=Role.OWNER)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "Only an owner can give the Owner role" in response.content.decode()
    assert not Invitation.objects.exists()


def test_admin_invites_a_clinician(client, admin, clinic):
    client.force_login(admin)

    invite(client, clinic)

    assert Invitation.objects.get().invited_by == admin


def test_clinician_cannot_invite(client, clinician, clinic):
    client.force_login(clinician)

    response = invite(client, clinic)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert not Invitation.objects.exists()


def test_outsider_gets_404_when_inviting(client, outsider, clinic):
    client.force_login(outsider)

    response = invite(client, clinic)

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not Invitation.objects.exists()


def test_new_invitation_replaces_the_open_one(client, owner, clinic):
    client.force_login(owner)
    invite(client, clinic)
    first = invitation_link()

    invite(client, clinic)

    assert Client().get(first).status_code == HTTPStatus.GONE
    assert Client().get(invitation_link()).status_code == HTTPStatus.OK


def test_owner_withdraws_an_invitation(client, owner, clinic):
    client.force_login(owner)
    invite(client, clinic)
    invitation = Invitation.objects.get()

    client.post(f"/c/{clinic.slug}/members/invitations/{invitation.uuid}/revoke/")

    assert Client().get(invitation_link()).status_code == HTTPStatus.GONE


def test_outsider_cannot_withdraw_an_invitation(client, owner, outsider, clinic):
    client.force_login(owner)
    invite(client, clinic)
    invitation = Invitation.objects.get()
    client.force_login(outsider)

    response = client.post(f"/c/{clinic.slug}/members/invitations/{invitation.uuid}/revoke/")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert Invitation.objects.get().revoked_at is None


def test_invited_user_sees_only_their_clinic(client, owner, clinic, other_clinic):
    client.force_login(owner)
    invite(client, clinic)
    newcomer = Client()
    newcomer.post(invitation_link(), {"full_name": "Nina", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})

    assert newcomer.get(f"/c/{other_clinic.slug}/").status_code == HTTPStatus.NOT_FOUND
    assert "clinic-switch" not in newcomer.get(f"/c/{clinic.slug}/").content.decode()


def test_invitation_is_withdrawn_when_the_mail_cannot_be_sent(client, owner, clinic, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    client.force_login(owner)

    response = invite(client, clinic)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "could not be sent" in response.content.decode()
    assert Invitation.objects.get().revoked_at is not None

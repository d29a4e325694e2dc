from __future__ import annotations

from http import HTTPStatus

import pytest
from django.test import Client

from portal.exceptions import PortalError
from tenants import services
from tenants.models import AuditEvent, Membership
from tenants.roles import Role
from tests.factories import make_user


def role_url(clinic, user) -> str:
    return f"/c/{clinic.slug}/members/{user.uuid}/role/"


def remove_url(clinic, user) -> str:
    return f"/c/{clinic.slug}/members/{user.uuid}/remove/"


def role_of(clinic, user) -> str | None:
    membership = Membership.objects.for_clinic(clinic).filter(user=user).first()
    return membership.role if membership else None


def test_members_page_lists_members(client, owner, admin, clinician, clinic):
    client.force_login(admin)

    response = client.get(f"/c/{clinic.slug}/members/")

    text = response.content.decode()
    assert response.status_code == HTTPStatus.OK
    for user in (owner, admin, clinician):
        assert user.email in text


@pytest.mark.parametrize("role_fixture", ["clinician", "uploader", "billing_admin"])
def test_members_page_is_forbidden_without_manage_right(client, clinic, request, role_fixture):
    client.force_login(request.getfixturevalue(role_fixture))

    assert client.get(f"/c/{clinic.slug}/members/").status_code == HTTPStatus.FORBIDDEN


def test_outsider_gets_404_for_members_page(client, outsider, clinic):
    client.force_login(outsider)

    assert client.get(f"/c/{clinic.slug}/members/").status_code == HTTPStatus.NOT_FOUND


def test_anonymous_is_sent_to_login(client, clinic):
    response = client.get(f"/c/{clinic.slug}/members/")

    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"].startswith("/accounts/login/")


def test_owner_changes_a_role_and_it_is_audited(client, owner, clinician, clinic):
    client.force_login(owner)

    client.post(role_url(clinic, clinician), {"role": Role.UPLOADER})

    assert role_of(clinic, clinician) == Role.UPLOADER
    event = AuditEvent.objects.for_clinic(clinic).get(action="member.role_changed")
    assert event.details == {"from": "clinician", "to": "uploader"}
    assert event.object_id == str(clinician.uuid)


def test_unknown_role_is_refused(client, owner, clinician, clinic):
    client.force_login(owner)

    response = client.post(role_url(clinic, clinician), {"role": "emperor"}, follow=True)

    assert "Choose one of the listed roles" in response.content.decode()
    assert role_of(clinic, clinician) == Role.CLINICIAN


def test_last_owner_cannot_be_demoted(client, owner, clinic):
    client.force_login(owner)

    response = client.post(role_url(clinic, owner), {"role": Role.ADMIN}, follow=True)

    assert "at least one owner" in response.content.decode()
    assert role_of(clinic, owner) == Role.OWNER


def test_last_owner_cannot_be_removed(client, owner, clinic):
    client.force_login(owner)

    response = client.post(remove_url(clinic, owner), follow=True)

    assert "at least one owner" in response.content.decode()
    assert role_of(clinic, owner) == Role.OWNER


def test_an_owner_can_be_removed_when_another_remains(client, owner, admin, clinic):
    client.force_login(owner)
    client.post(role_url(clinic, admin), {"role": Role.OWNER})

    client.post(remove_url(clinic, owner))

    assert role_of(clinic, owner) is None
    assert role_of(clinic, admin) == Role.OWNER


def test_admin_cannot_demote_or_remove_an_owner(client, owner, admin, clinic):
    client.force_login(admin)

    client.post(role_url(clinic, owner), {"role": Role.CLINICIAN})
    response = client.post(remove_url(clinic, owner), follow=True)

    assert "Only an owner can" in response.content.decode()
    assert role_of(clinic, owner) == Role.OWNER


def test_admin_cannot_promote_to_owner(client, admin, clinician, clinic):
    client.force_login(admin)

    client.post(role_url(clinic, clinician), {"role": Role.OWNER})

    assert role_of(clinic, clinician) == Role.CLINICIAN


def test_removed_member_loses_access_at_once(client, owner, clinician, clinic):
    member = Client()
    member.force_login(clinician)
    client.force_login(owner)

    client.post(remove_url(clinic, clinician))

    assert member.get(f"/c/{clinic.slug}/").status_code == HTTPStatus.NOT_FOUND
    assert AuditEvent.objects.for_clinic(clinic).filter(action="member.removed").exists()


def test_clinician_cannot_change_roles(client, clinician, uploader, clinic):
    client.force_login(clinician)

    response = client.post(role_url(clinic, uploader), {"role": Role.ADMIN})

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert role_of(clinic, uploader) == Role.UPLOADER


def test_outsider_gets_404_changing_a_role_or_removing(client, outsider, clinician, clinic):
    client.force_login(outsider)

    assert client.post(role_url(clinic, clinician), {"role": Role.OWNER}).status_code == HTTPStatus.NOT_FOUND
    assert client.post(remove_url(clinic, clinician)).status_code == HTTPStatus.NOT_FOUND
    assert role_of(clinic, clinician) == Role.CLINICIAN


def test_member_of_another_clinic_is_404_inside_mine(client, owner, outsider, clinic, other_clinic):
    client.force_login(owner)

    response = client.post(role_url(clinic, outsider), {"role": Role.ADMIN})

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert role_of(other_clinic, outsider) == Role.OWNER


def test_security_page_sets_two_factor_and_idle_timeout(client, owner, clinic):
    client.force_login(owner)

    response = client.post(f"/c/{clinic.slug}/security/", {"require_two_factor": "on", "session_idle_minutes": "5"})

    clinic.refresh_from_db()
    assert response.status_code == HTTPStatus.FOUND
    assert clinic.require_two_factor
    assert clinic.session_idle_minutes == 5
    assert AuditEvent.objects.for_clinic(clinic).filter(action="clinic.security_changed").exists()


@pytest.mark.parametrize("minutes", ["0", "16", "abc"])
def test_security_page_refuses_bad_idle_timeout(client, owner, clinic, minutes):
    client.force_login(owner)

    response = client.post(f"/c/{clinic.slug}/security/", {"require_two_factor": "on", "session_idle_minutes": minutes})

    clinic.refresh_from_db()
    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert b"errorlist" in response.content
    assert not clinic.require_two_factor
    assert clinic.session_idle_minutes is None


def test_security_page_forbidden_for_clinician_and_404_for_outsider(client, clinician, outsider, clinic):
    client.force_login(clinician)
    forbidden = client.post(f"/c/{clinic.slug}/security/", {"require_two_factor": "on"})
    client.force_login(outsider)
    missing = client.post(f"/c/{clinic.slug}/security/", {"require_two_factor": "on"})

    clinic.refresh_from_db()
    assert forbidden.status_code == HTTPStatus.FORBIDDEN
    assert missing.status_code == HTTPStatus.NOT_FOUND
    assert not clinic.require_two_factor


def _admin_token(clinic, admin) -> str:
    from tenants import services

    membership = Membership.objects.for_clinic(clinic).get(user=admin)
    return services.api_token_create(clinic=clinic, name="PACS router", role=Role.ADMIN, created_by=admin,
                                     granted_by=membership).secret


def test_removing_a_member_revokes_the_api_tokens_they_created(client, owner, admin, clinic):
    secret = _admin_token(clinic, admin)
    client.force_login(owner)

    client.post(remove_url(clinic, admin))

    api = Client().get(f"/api/v1/clinics/{clinic.slug}/members/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    studies = Client().get(f"/api/v1/clinics/{clinic.slug}/studies/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert (api.status_code, studies.status_code) == (HTTPStatus.UNAUTHORIZED, HTTPStatus.UNAUTHORIZED)
    removed = AuditEvent.objects.for_clinic(clinic).get(action="member.removed")
    assert removed.details["api_tokens_revoked"] == 1


def test_owner_may_keep_a_removed_members_tokens_by_choice(client, owner, admin, clinic):
    secret = _admin_token(clinic, admin)
    client.force_login(owner)
    page = client.get(f"/c/{clinic.slug}/members/").content.decode()

    client.post(remove_url(clinic, admin), {"keep_api_tokens": "on"})

    assert "1 API token" in page and "keep_api_tokens" in page
    api = Client().get(f"/api/v1/clinics/{clinic.slug}/members/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.status_code == HTTPStatus.OK
    assert AuditEvent.objects.for_clinic(clinic).get(action="member.removed").details["api_tokens_kept"] == 1


def test_api_member_delete_revokes_tokens_unless_kept(owner, admin, clinic):
    secret = _admin_token(clinic, admin)
    owner_client = Client()
    owner_client.force_login(owner)

    response = owner_client.delete(f"/api/v1/clinics/{clinic.slug}/members/{admin.uuid}/")

    assert response.status_code == HTTPStatus.NO_CONTENT
    api = Client().get(f"/api/v1/clinics/{clinic.slug}/members/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.status_code == HTTPStatus.UNAUTHORIZED


def test_removing_a_member_leaves_other_clinics_tokens_alone(owner, admin, clinic, other_clinic):
    from tenants import services

    Membership.objects.create(clinic=other_clinic, user=admin, role=Role.ADMIN)
    elsewhere = services.api_token_create(clinic=other_clinic, name="Other", role=Role.ADMIN, created_by=admin).secret
    owner_client = Client()
    owner_client.force_login(owner)

    owner_client.post(remove_url(clinic, admin))

    api = Client().get(f"/api/v1/clinics/{other_clinic.slug}/members/", HTTP_AUTHORIZATION=f"Bearer {elsewhere}")
    assert api.status_code == HTTPStatus.OK


def _members_status(client, clinic, secret: str) -> int:
    return client.get(f"/api/v1/clinics/{clinic.slug}/members/", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code


def test_a_token_minted_with_a_token_is_revoked_with_its_makers_membership(client, owner, admin, clinic):
    """A token made over REST with a token is its maker's: it went on working after the maker was removed."""
    first = _admin_token(clinic, admin)
    minted = client.post(f"/api/v1/clinics/{clinic.slug}/tokens/", {"name": "minted", "role": "admin"},
                         content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {first}")
    assert minted.status_code == 201
    second = minted.json()["token"]
    client.force_login(owner)

    assert client.delete(f"/api/v1/clinics/{clinic.slug}/members/{admin.uuid}/").status_code == 204
    client.logout()

    assert _members_status(client, clinic, first) == 401
    assert _members_status(client, clinic, second) == 401
    removed = AuditEvent.objects.filter(clinic=clinic, action="member.removed").get()
    assert removed.details["api_tokens_revoked"] == 2


def test_a_demoted_member_cannot_take_her_role_back_with_a_token_she_made_before(client, owner, admin, clinic):
    secret = _admin_token(clinic, admin)
    client.force_login(owner)
    assert client.patch(f"/api/v1/clinics/{clinic.slug}/members/{admin.uuid}/", {"role": "uploader"},
                        content_type="application/json").status_code == 200
    client.logout()

    regained = client.patch(f"/api/v1/clinics/{clinic.slug}/members/{admin.uuid}/", {"role": "admin"},
                            content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert regained.status_code == 401
    assert role_of(clinic, admin) == Role.UPLOADER
    changed = AuditEvent.objects.filter(clinic=clinic, action="member.role_changed").get()
    assert changed.details["api_tokens_revoked"] == 1


def test_a_demotion_keeps_the_tokens_the_new_role_could_make(client, owner, admin, clinic):
    kept = services.api_token_create(clinic=clinic, name="uploads", role=Role.UPLOADER, created_by=admin).secret
    client.force_login(owner)

    client.patch(f"/api/v1/clinics/{clinic.slug}/members/{admin.uuid}/", {"role": "clinician"},
                 content_type="application/json")

    stored = client.post(f"/dicomweb/{clinic.slug}/studies", HTTP_AUTHORIZATION=f"Bearer {kept}")
    assert stored.status_code not in (401, 403)


def test_invitations_a_removed_member_sent_are_withdrawn(owner, admin, clinic):
    membership = clinic.memberships.get(user=admin)
    sent = services.invitation_create(clinic=clinic, email="friend@example.org", role=Role.ADMIN, invited_by=admin,
                                      granted_by=membership, base_url="http://testserver/")
    services.membership_remove(membership=membership, granted_by=clinic.memberships.get(user=owner))

    with pytest.raises(PortalError):
        services.invitation_accept(token=sent.url.rstrip("/").rsplit("/", 1)[-1],
                                   user=make_user(email="friend@example.org"))
    removed = AuditEvent.objects.filter(clinic=clinic, action="member.removed").get()
    assert removed.details["invitations_withdrawn"] == 1

from __future__ import annotations

from http import HTTPStatus

import pytest
from django.core import mail
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ApiToken, Invitation, Membership
from tenants.roles import Role


def api(clinic, path="") -> str:
    return f"/api/v1/clinics/{clinic.slug}/{path}"


@pytest.fixture
def api_client() -> APIClient:
    return APIClient()


def bearer(api_client: APIClient, clinic, role: str) -> APIClient:
    created = services.api_token_create(clinic=clinic, name=f"{role} token", role=role)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.secret}")
    return api_client


def test_members_list_with_admin_token(api_client, owner, clinician, clinic):
    response = bearer(api_client, clinic, Role.ADMIN).get(api(clinic, "members/"))

    assert response.status_code == HTTPStatus.OK
    emails = {row["email"]: row["role"] for row in response.json()["results"]}
    assert emails == {owner.email: "owner", clinician.email: "clinician"}
    assert set(response.json()["results"][0]) == {"id", "email", "full_name", "role", "joined_at"}


def test_members_list_with_session(api_client, owner, clinic):
    api_client.force_login(owner)

    assert api_client.get(api(clinic, "members/")).status_code == HTTPStatus.OK


@pytest.mark.parametrize("role", [Role.CLINICIAN, Role.UPLOADER, Role.BILLING])
def test_members_api_forbidden_without_manage(api_client, clinic, role):
    response = bearer(api_client, clinic, role).get(api(clinic, "members/"))

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert "message" in response.json()


def test_token_of_another_clinic_gets_404(api_client, clinic, other_clinic):
    response = bearer(api_client, other_clinic, Role.OWNER).get(api(clinic, "members/"))

    assert response.status_code == HTTPStatus.NOT_FOUND


def test_outsider_session_gets_404_everywhere(api_client, outsider, clinician, clinic):
    api_client.force_login(outsider)
    token = services.api_token_create(clinic=clinic, name="x", role=Role.UPLOADER).token

    for method, path, body in [
        ("get", "members/", None), ("patch", f"members/{clinician.uuid}/", {"role": "owner"}),
        ("delete", f"members/{clinician.uuid}/", None), ("get", "invitations/", None),
        ("post", "invitations/", {"email": "x@example.org", "role": "clinician"}),
        ("get", "tokens/", None), ("post", "tokens/", {"name": "n", "role": "owner"}),
        ("delete", f"tokens/{token.uuid}/", None),
    ]:
        response = getattr(api_client, method)(api(clinic, path), body, format="json")
        assert response.status_code == HTTPStatus.NOT_FOUND, (method, path)
    assert Membership.objects.for_clinic(clinic).get(user=clinician).role == Role.CLINICIAN
    assert not Invitation.objects.exists()
    assert ApiToken.objects.get().revoked_at is None


def test_anonymous_gets_401(api_client, clinic):
    response = api_client.get(api(clinic, "members/"))

    assert response.status_code == HTTPStatus.UNAUTHORIZED


def test_change_role_via_api(api_client, clinician, clinic):
    response = bearer(api_client, clinic, Role.ADMIN).patch(
        api(clinic, f"members/{clinician.uuid}/"), {"role": "uploader"}, format="json"
    )

    assert response.status_code == HTTPStatus.OK
    assert response.json()["role"] == "uploader"
    assert Membership.objects.for_clinic(clinic).get(user=clinician).role == Role.UPLOADER


def test_bad_role_via_api_is_400_with_message(api_client, clinician, clinic):
    response = bearer(api_client, clinic, Role.ADMIN).patch(
        api(clinic, f"members/{clinician.uuid}/"), {"role": "emperor"}, format="json"
    )

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert response.json()["message"]
    assert Membership.objects.for_clinic(clinic).get(user=clinician).role == Role.CLINICIAN


def test_last_owner_cannot_be_removed_via_api(api_client, owner, clinic):
    response = bearer(api_client, clinic, Role.OWNER).delete(api(clinic, f"members/{owner.uuid}/"))

    assert response.status_code == HTTPStatus.CONFLICT
    assert "at least one owner" in response.json()["message"]
    assert Membership.objects.for_clinic(clinic).filter(user=owner).exists()


def test_remove_member_via_api(api_client, clinician, clinic):
    response = bearer(api_client, clinic, Role.ADMIN).delete(api(clinic, f"members/{clinician.uuid}/"))

    assert response.status_code == HTTPStatus.NO_CONTENT
    assert not Membership.objects.for_clinic(clinic).filter(user=clinician).exists()


def test_invite_via_api_sends_mail(api_client, clinic):
    response = bearer(api_client, clinic, Role.ADMIN).post(
        api(clinic, "invitations/"), {"email": "tech@example.org", "role": "uploader"}, format="json"
    )

    assert response.status_code == HTTPStatus.CREATED
    assert response.json()["email"] == "tech@example.org"
    assert mail.outbox[0].to == ["tech@example.org"]
    assert Invitation.objects.for_clinic(clinic).get().invited_by is None


def test_revoke_invitation_via_api(api_client, clinic):
    client = bearer(api_client, clinic, Role.ADMIN)
    created = client.post(api(clinic, "invitations/"), {"email": "t@example.org", "role": "uploader"}, format="json")

    response = client.delete(api(clinic, f"invitations/{created.json()['id']}/"))

    assert response.status_code == HTTPStatus.NO_CONTENT
    assert Invitation.objects.get().revoked_at is not None


def test_create_list_and_revoke_token_via_api(api_client, clinic):
    client = bearer(api_client, clinic, Role.ADMIN)

    created = client.post(api(clinic, "tokens/"), {"name": "viewer", "role": "clinician"}, format="json")
    listed = client.get(api(clinic, "tokens/"))
    revoked = client.delete(api(clinic, f"tokens/{created.json()['id']}/"))

    assert created.status_code == HTTPStatus.CREATED
    assert created.json()["token"].startswith("pacs_")
    assert all("token" not in row for row in listed.json()["results"])
    assert {row["name"] for row in listed.json()["results"]} == {"viewer", "admin token"}
    assert revoked.status_code == HTTPStatus.NO_CONTENT
    assert ApiToken.objects.get(name="viewer").revoked_at is not None


def test_admin_token_cannot_mint_owner_token(api_client, clinic):
    response = bearer(api_client, clinic, Role.ADMIN).post(api(clinic, "tokens/"), {"name": "x", "role": "owner"},
                                                           format="json")

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert ApiToken.objects.count() == 1

"""Token revocation follows the same rights-within rule as managing members."""

from __future__ import annotations

from http import HTTPStatus

import pytest
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ApiToken
from tenants.roles import Role


def revoke_page(client, clinic, token):
    return client.post(f"/c/{clinic.slug}/tokens/{token.uuid}/revoke/", follow=True)


def revoke_api(clinic, token, secret):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client.delete(f"/api/v1/clinics/{clinic.slug}/tokens/{token.uuid}/")


def make_token(clinic, role, created_by=None, name="Router"):
    return services.api_token_create(clinic=clinic, name=name, role=role, created_by=created_by)


def test_admin_cannot_revoke_owner_role_token_on_the_page(client, admin, clinic):
    token = make_token(clinic, Role.OWNER).token
    client.force_login(admin)

    response = revoke_page(client, clinic, token)

    assert "Only an owner can revoke" in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is None


def test_admin_cannot_revoke_a_token_an_owner_made_on_the_page(client, owner, admin, clinic):
    token = make_token(clinic, Role.UPLOADER, created_by=owner).token
    client.force_login(admin)

    response = revoke_page(client, clinic, token)

    assert "Only an owner can revoke" in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is None


def test_admin_token_cannot_revoke_owner_role_token_via_api(clinic):
    admin_secret = make_token(clinic, Role.ADMIN, name="admin").secret
    token = make_token(clinic, Role.OWNER).token

    response = revoke_api(clinic, token, admin_secret)

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert response.json()["message"].startswith("Only an owner can revoke")
    token.refresh_from_db()
    assert token.revoked_at is None


def test_admin_token_cannot_revoke_a_token_an_owner_made_via_api(owner, clinic):
    admin_secret = make_token(clinic, Role.ADMIN, name="admin").secret
    token = make_token(clinic, Role.CLINICIAN, created_by=owner).token

    response = revoke_api(clinic, token, admin_secret)

    assert response.status_code == HTTPStatus.FORBIDDEN
    token.refresh_from_db()
    assert token.revoked_at is None


def test_owner_revokes_owner_role_token_on_the_page(client, owner, clinic):
    token = make_token(clinic, Role.OWNER).token
    client.force_login(owner)

    response = revoke_page(client, clinic, token)

    assert "is revoked" in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_owner_token_revokes_owner_role_token_via_api(clinic):
    owner_secret = make_token(clinic, Role.OWNER, name="owner").secret
    token = make_token(clinic, Role.OWNER).token

    response = revoke_api(clinic, token, owner_secret)

    assert response.status_code == HTTPStatus.NO_CONTENT
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_an_owner_role_token_may_revoke_itself_even_when_the_caller_is_lesser(clinic):
    # The holder of a token may always give it up; here the token is its own holder.
    created = make_token(clinic, Role.OWNER)

    response = revoke_api(clinic, created.token, created.secret)

    assert response.status_code == HTTPStatus.NO_CONTENT
    assert ApiToken.objects.get().revoked_at is not None


@pytest.mark.parametrize("role", [Role.ADMIN, Role.CLINICIAN, Role.UPLOADER])
def test_admin_still_revokes_tokens_within_their_rights(client, admin, clinician, clinic, role):
    token = make_token(clinic, role, created_by=clinician).token
    client.force_login(admin)

    response = revoke_page(client, clinic, token)

    assert "is revoked" in response.content.decode()
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_admin_revokes_their_own_token(client, admin, clinic):
    token = make_token(clinic, Role.ADMIN, created_by=admin).token
    client.force_login(admin)

    revoke_page(client, clinic, token)

    token.refresh_from_db()
    assert token.revoked_at is not None


def test_the_tokens_page_offers_revoke_only_where_it_will_be_done(client, owner, admin, clinic):
    owners = make_token(clinic, Role.OWNER, name="Owner router").token
    admins = make_token(clinic, Role.UPLOADER, created_by=admin, name="Admin router").token
    client.force_login(admin)

    page = client.get(f"/c/{clinic.slug}/tokens/").content.decode()

    assert f"/tokens/{admins.uuid}/revoke/" in page
    assert f"/tokens/{owners.uuid}/revoke/" not in page
    assert "an owner may revoke it" in page

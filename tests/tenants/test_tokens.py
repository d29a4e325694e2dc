from __future__ import annotations

import io
import re
import time
from http import HTTPStatus

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from tenants import services
from tenants.audit import Actor
from tenants.models import ApiToken, AuditEvent
from tenants.roles import Role
from tenants.secrets import secret_hash
from tests.factories import make_clinic


def create(client, clinic, name="Router", role=Role.UPLOADER):
    return client.post(f"/c/{clinic.slug}/tokens/", {"name": name, "role": role})


def test_admin_creates_token_and_sees_the_secret_once(client, admin, clinic):
    client.force_login(admin)

    response = create(client, clinic)

    secret = re.search(r'id="new-token">([^<]+)<', response.content.decode()).group(1)
    token = ApiToken.objects.for_clinic(clinic).get()
    assert token.token_hash == secret_hash(secret)
    assert token.role == Role.UPLOADER
    assert token.created_by == admin
    assert secret not in client.get(f"/c/{clinic.slug}/tokens/").content.decode()
    assert AuditEvent.objects.for_clinic(clinic).filter(action="api_token.created").exists()


def test_token_list_shows_last_used_time(client, owner, clinic):
    client.force_login(owner)
    secret = re.search(r'id="new-token">([^<]+)<', create(client, clinic).content.decode()).group(1)

    Client().get(f"/api/v1/clinics/{clinic.slug}/members/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    page = client.get(f"/c/{clinic.slug}/tokens/").content.decode()

    assert ApiToken.objects.get().last_used_at is not None
    assert "never" not in page


def test_token_with_blank_name_or_bad_role_is_refused(client, owner, clinic):
    client.force_login(owner)

    response = create(client, clinic, name="   ", role="emperor")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert b"errorlist" in response.content
    assert not ApiToken.objects.exists()


def test_admin_cannot_create_owner_token(client, admin, clinic):
    client.force_login(admin)

    response = create(client, clinic, role=Role.OWNER)

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "Only an owner" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_revoked_token_stops_working(client, owner, clinic):
    client.force_login(owner)
    secret = re.search(r'id="new-token">([^<]+)<', create(client, clinic, role=Role.ADMIN).content.decode()).group(1)
    token = ApiToken.objects.get()

    client.post(f"/c/{clinic.slug}/tokens/{token.uuid}/revoke/")

    response = Client().get(f"/api/v1/clinics/{clinic.slug}/members/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert AuditEvent.objects.for_clinic(clinic).filter(action="api_token.revoked").exists()


def test_tokens_page_forbidden_for_clinician(client, clinician, clinic):
    client.force_login(clinician)

    assert client.get(f"/c/{clinic.slug}/tokens/").status_code == HTTPStatus.FORBIDDEN
    assert create(client, clinic).status_code == HTTPStatus.FORBIDDEN
    assert not ApiToken.objects.exists()


def test_outsider_gets_404_for_tokens(client, owner, outsider, clinic):
    client.force_login(owner)
    create(client, clinic)
    token = ApiToken.objects.get()
    client.force_login(outsider)

    assert client.get(f"/c/{clinic.slug}/tokens/").status_code == HTTPStatus.NOT_FOUND
    assert client.post(f"/c/{clinic.slug}/tokens/{token.uuid}/revoke/").status_code == HTTPStatus.NOT_FOUND
    assert ApiToken.objects.get().revoked_at is None


def test_token_of_another_clinic_cannot_be_revoked_from_mine(client, outsider, owner, clinic, other_clinic):
    client.force_login(outsider)
    create(client, other_clinic)
    token = ApiToken.objects.get()
    client.force_login(owner)

    response = client.post(f"/c/{clinic.slug}/tokens/{token.uuid}/revoke/")

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert ApiToken.objects.get().revoked_at is None


def test_a_token_in_use_stops_working_as_soon_as_it_is_revoked(clinic):
    # The token's statement is compiled once per connection (portal.prepared); its answer never is.
    secret = services.api_token_create(clinic=clinic, name="viewer", role=Role.CLINICIAN).secret
    url = f"/dicomweb/{clinic.slug}/studies"
    assert Client().get(url, HTTP_AUTHORIZATION=f"Bearer {secret}").status_code == HTTPStatus.OK

    services.api_token_revoke(token=ApiToken.objects.get(), granted_by=None, by=Actor.system())

    response = Client().get(url, HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == HTTPStatus.UNAUTHORIZED
    assert response.json()["error"] == "invalid_token"


def test_an_api_token_does_not_open_the_portals_pages(client, clinic):
    """Pages are written for a signed-in person (a token's POST made objects with no creator, or failed)."""
    secret = services.api_token_create(clinic=clinic, name="automation", role=Role.ADMIN).secret
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}

    page = client.get(f"/c/{clinic.slug}/studies/", **auth)
    made = client.post(f"/c/{clinic.slug}/tokens/", {"name": "by-page", "role": "admin"}, **auth)

    assert page.status_code == made.status_code == 403
    assert page.json()["error"] == "api_token_not_accepted"
    assert not ApiToken.objects.filter(name="by-page").exists()
    # The upload endpoint says it takes tokens (README), and still does.
    upload = client.post(f"/c/{clinic.slug}/upload/files/", {}, **auth)
    assert upload.status_code == 400 and upload.json()["outcome"] == "rejected"


def test_a_second_token_of_the_same_name_is_refused_even_once_the_first_is_revoked(client, owner, clinic):
    # The audit trail names a token by its name: two "Router" tokens could not be told apart in it.
    client.force_login(owner)
    create(client, clinic, name="Router")
    services.api_token_revoke(token=ApiToken.objects.get(), granted_by=None, by=Actor(user=owner))

    page = create(client, clinic, name="router ")
    api = client.post(f"/api/v1/clinics/{clinic.slug}/tokens/", {"name": "ROUTER", "role": Role.UPLOADER},
                      content_type="application/json")

    assert page.status_code == HTTPStatus.BAD_REQUEST and "already has a token named" in page.content.decode()
    assert api.status_code == HTTPStatus.BAD_REQUEST and "already has a token named" in api.json()["message"]
    assert list(ApiToken.objects.for_clinic(clinic).values_list("name", flat=True)) == ["Router"]
    # Another clinic may use the name.
    assert services.api_token_create(clinic=make_clinic(), name="Router", role=Role.UPLOADER)


def test_create_api_token_twice_without_a_name_makes_two_working_tokens(clinic):
    secrets = []
    for _ in range(2):
        out = io.StringIO()
        call_command("create_api_token", clinic=clinic.slug, role=Role.UPLOADER, stdout=out)
        secrets.append(out.getvalue().strip())
        time.sleep(1)  # the default name carries the time to the second

    assert len({*secrets}) == 2
    assert {t.token_hash for t in ApiToken.objects.for_clinic(clinic)} == {secret_hash(s) for s in secrets}
    with pytest.raises(CommandError, match="already has a token named 'bridge'"):
        for _ in range(2):
            call_command("create_api_token", clinic=clinic.slug, role=Role.UPLOADER, name="bridge", stdout=io.StringIO())

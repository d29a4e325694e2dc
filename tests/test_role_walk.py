"""Walk every clinic route as the roles that may not see patient data (uploader, billing admin)
and check that no answer carries a patient's data.

The project's own walk (tests/test_isolation.py) checks other clinics; this one checks roles inside the
clinic, with the clinic's own real objects filled into the URLs.
"""

from __future__ import annotations

import pytest

from tenants import services
from tenants.roles import Role
from tests.factories import make_member, make_user

# The fixture in test_isolation builds a clinic with one of everything; reuse it for clinic A itself.
from tests.test_isolation import (
    build_url,
    clinic_b,  # noqa: F401  (a pytest fixture)
    clinic_routes,
    fill_args,
)

PATIENT_SECRETS = ["BRAVO^SECRET", "BRAVO-PID-4711", "Bravo confidential", "BRAVOACC9", "Bravo secret series"]


def _body(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    return response.content.decode("utf-8", "replace")


@pytest.mark.parametrize("role", [Role.UPLOADER, Role.BILLING])
def test_roles_without_view_right_see_no_patient_data_anywhere(client, role, clinic_b):  # noqa: F811
    objects = clinic_b  # a clinic with a patient, study, series, instance, share, job...
    user = make_member(clinic=objects.clinic, role=role, user=make_user(email=f"{role}@b.example"))
    token = services.api_token_create(clinic=objects.clinic, name=f"t-{role}", role=role).secret
    client.force_login(user)
    leaks = []
    for route in clinic_routes():
        values, _ = fill_args(route, objects)
        url = build_url(route, {**values, "clinic_slug": objects.clinic.slug})
        auths = {"session": {}}
        if route.is_api:
            auths["token"] = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        for how, headers in auths.items():
            response = client.get(url, **headers)
            text = _body(response)
            found = [s for s in PATIENT_SECRETS if s in text]
            if found:
                leaks.append(f"GET {url} ({route.name}, {how}) {response.status_code}: shows {found}")
    assert not leaks, f"{role} sees patient data:\n" + "\n".join(leaks)


def _state(objects) -> dict:
    from studies.sharing.models import Share, UploadLink
    from tests.test_isolation import _snapshot

    clinic = objects.clinic
    state = _snapshot(objects)
    state["shares"] = list(Share.objects.for_clinic(clinic).values_list("uuid", "revoked_at", "expires_at"))
    state["upload_links"] = list(UploadLink.objects.for_clinic(clinic).values_list("uuid", "revoked_at"))
    return state


# What each role may change (README role table); anything else changed by an empty POST/DELETE is a defect.
@pytest.mark.parametrize("role", [Role.CLINICIAN, Role.UPLOADER, Role.BILLING])
def test_roles_cannot_change_what_the_role_table_denies(client, role, clinic_b):  # noqa: F811
    objects = clinic_b
    user = make_member(clinic=objects.clinic, role=role, user=make_user(email=f"{role}-w@b.example"))
    token = services.api_token_create(clinic=objects.clinic, name=f"w-{role}", role=role).secret
    client.force_login(user)
    before = _state(objects)
    changed = []
    for route in clinic_routes():
        values, _ = fill_args(route, objects)
        url = build_url(route, {**values, "clinic_slug": objects.clinic.slug})
        auths = {"session": {}}
        if route.is_api:
            auths["token"] = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
        for method in ("post", "delete") if route.is_api else ("post",):
            for how, headers in auths.items():
                getattr(client, method)(url, **headers)
                after = _state(objects)
                if after != before:
                    diff = [k for k in after if after[k] != before[k]]
                    if role == Role.CLINICIAN and set(diff) <= {"shares", "upload_links"}:
                        before = after  # sharing is the clinician's right
                        continue
                    changed.append(f"{method.upper()} {url} ({route.name}, {how}) changed {diff}")
                    before = after
    assert not changed, f"{role} changed:\n" + "\n".join(changed)

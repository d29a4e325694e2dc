"""The audit log page, its CSV and FHIR exports, and /api/v1/clinics/<slug>/audit/."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.utils import timezone

from tenants import audit_export, services
from tenants.audit import audit_chains_verify, audit_record
from tenants.models import AuditEvent
from tenants.roles import Role


def page_url(clinic, suffix: str = "") -> str:
    return f"/c/{clinic.slug}/audit/{suffix}"


def api_url(clinic) -> str:
    return f"/api/v1/clinics/{clinic.slug}/audit/"


@pytest.fixture
def trail(clinic, owner, admin):
    """A mix of actions, actors and results, each tagged "t-..." in its object id.

    Signing in and reading the trail add entries of their own; tests look at the tagged ones.
    """
    audit_record(clinic=clinic, action="auth.login", actor=admin, ip_address="203.0.113.7", object_type="user",
                 object_id="t-login")
    audit_record(clinic=clinic, action="auth.login_failed", actor_label="=HYPERLINK(\"http://evil\")",
                 result="failure", ip_address="198.51.100.9", object_type="user", object_id="t-failed")
    audit_record(clinic=clinic, action="study.viewed", actor=owner, object_type="study", object_id="t-viewed")
    audit_record(clinic=clinic, action="study.deleted", actor=owner, object_type="study", object_id="t-deleted")
    audit_record(clinic=clinic, action="api_token.created", actor=owner, object_type="api_token",
                 object_id="t-token")
    return clinic


def tagged(events) -> list[str]:
    return [event.object_id for event in events if event.object_id.startswith("t-")]


def listed(response) -> list[str]:
    return tagged(response.context["page"].object_list)


def test_owner_sees_the_trail_newest_first(client, owner, trail):
    client.force_login(owner)

    response = client.get(page_url(trail))

    assert response.status_code == HTTPStatus.OK
    assert listed(response) == ["t-token", "t-deleted", "t-viewed", "t-failed", "t-login"]
    assert response.context["page"][0].action == "audit.viewed"
    assert b"203.0.113.7" in response.content


def test_audit_pages_only_answer_reads(client, owner, trail):
    client.force_login(owner)

    for suffix in ("", "csv/", "fhir/"):
        assert client.post(page_url(trail, suffix)).status_code == HTTPStatus.METHOD_NOT_ALLOWED


def test_admin_may_read_the_trail(client, admin, trail):
    client.force_login(admin)

    assert client.get(page_url(trail)).status_code == HTTPStatus.OK


@pytest.mark.parametrize("role_fixture", ["clinician", "uploader", "billing_admin"])
def test_members_without_manage_right_are_refused(client, trail, role_fixture, request):
    client.force_login(request.getfixturevalue(role_fixture))

    for suffix in ("", "csv/", "fhir/"):
        assert client.get(page_url(trail, suffix)).status_code == HTTPStatus.FORBIDDEN
    assert not AuditEvent.objects.for_clinic(trail).filter(action__startswith="audit.").exists()


def test_outsider_gets_404_and_nothing_is_recorded(client, outsider, trail, other_clinic):
    client.force_login(outsider)
    before = AuditEvent.objects.count()

    for suffix in ("", "csv/", "fhir/"):
        assert client.get(page_url(trail, suffix)).status_code == HTTPStatus.NOT_FOUND
    assert client.get(api_url(trail)).status_code == HTTPStatus.NOT_FOUND

    assert AuditEvent.objects.count() == before


def test_anonymous_user_is_sent_to_sign_in(client, trail):
    response = client.get(page_url(trail))

    assert response.status_code == HTTPStatus.FOUND
    assert response["Location"].startswith("/accounts/login/")


def test_filter_by_action_family(client, owner, trail):
    client.force_login(owner)

    response = client.get(page_url(trail), {"action": "auth"})

    assert listed(response) == ["t-failed", "t-login"]
    assert {e.action for e in response.context["page"]} <= {"auth.login", "auth.login_failed"}


def test_filter_by_exact_action(client, owner, trail):
    client.force_login(owner)

    response = client.get(page_url(trail), {"action": "auth.login"})

    assert listed(response) == ["t-login"]
    assert {e.action for e in response.context["page"]} == {"auth.login"}


def test_filter_by_result_actor_and_object(client, owner, admin, trail):
    client.force_login(owner)

    assert listed(client.get(page_url(trail), {"result": "failure"})) == ["t-failed"]
    assert listed(client.get(page_url(trail), {"actor": "admin@clinic"})) == ["t-login"]
    assert listed(client.get(page_url(trail), {"object": "t-del"})) == ["t-deleted"]
    assert listed(client.get(page_url(trail), {"object": "api_token"})) == ["t-token"]


def test_filter_by_date_range(client, owner, trail):
    client.force_login(owner)
    today = timezone.now().date()
    yesterday = today - timedelta(days=1)

    earlier = client.get(page_url(trail), {"date_from": yesterday.isoformat(), "date_to": yesterday.isoformat()})
    including_today = client.get(page_url(trail), {"date_from": yesterday.isoformat(), "date_to": today.isoformat()})

    assert len(earlier.context["page"]) == 0
    assert listed(including_today) == ["t-token", "t-deleted", "t-viewed", "t-failed", "t-login"]


def test_reversed_date_range_is_rejected_with_a_message(client, owner, trail):
    client.force_login(owner)

    response = client.get(page_url(trail, "csv/"), {"date_from": "2026-03-02", "date_to": "2026-03-01"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert b"The &#x27;To&#x27; date is before the &#x27;From&#x27; date." in response.content
    assert not AuditEvent.objects.for_clinic(trail).filter(action="audit.exported").exists()


def test_invalid_date_is_rejected(client, owner, trail):
    client.force_login(owner)

    response = client.get(page_url(trail), {"date_from": "yesterday"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert b"Enter a valid date." in response.content


def test_trail_is_paginated(client, owner, clinic):
    for number in range(60):
        audit_record(clinic=clinic, action="study.viewed", actor=owner, object_type="study", object_id=str(number))
    client.force_login(owner)

    first = client.get(page_url(clinic), {"action": "study"})
    second = client.get(page_url(clinic), {"action": "study", "page": 2})

    assert [e.object_id for e in first.context["page"]][:2] == ["59", "58"]
    assert len(first.context["page"]) == 50
    assert [e.object_id for e in second.context["page"]] == [str(n) for n in range(9, -1, -1)]
    assert b"action=study&amp;page=2" in first.content


def test_viewing_the_trail_is_recorded(client, owner, trail):
    client.force_login(owner)

    client.get(page_url(trail), {"action": "auth", "result": "failure"})

    entry = AuditEvent.objects.for_clinic(trail).get(action="audit.viewed")
    assert entry.actor == owner
    assert entry.details["filters"] == {"action": "auth", "result": "failure"}
    assert not list(audit_chains_verify(clinic=trail).problems)


def test_csv_export_has_the_filtered_entries(client, owner, trail):
    client.force_login(owner)

    response = client.get(page_url(trail, "csv/"), {"action": "study"})

    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment;" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(row["action"], row["object_id"]) for row in rows] == [
        ("study.deleted", "t-deleted"), ("study.viewed", "t-viewed"),
    ]
    assert rows[0]["actor"] == "owner@clinic-a.example"
    assert len(rows[0]["hash"]) == 64


def test_csv_export_neutralises_spreadsheet_formulas(client, owner, trail):
    client.force_login(owner)

    response = client.get(page_url(trail, "csv/"), {"result": "failure"})

    (row,) = [r for r in csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode()))
              if r["object_id"] == "t-failed"]
    assert row["actor"] == "'=HYPERLINK(\"http://evil\")"


def test_exporting_is_recorded_with_format_and_filters(client, owner, trail):
    client.force_login(owner)

    b"".join(client.get(page_url(trail, "fhir/"), {"actor": "owner"}).streaming_content)

    entry = AuditEvent.objects.for_clinic(trail).get(action="audit.exported")
    assert entry.details == {"filters": {"actor": "owner"}, "format": "fhir"}


def fhir_bundle(client, clinic, **params) -> dict:
    response = client.get(page_url(clinic, "fhir/"), params)
    assert response.status_code == HTTPStatus.OK
    assert response["Content-Type"].startswith("application/fhir+json")
    return json.loads(b"".join(response.streaming_content))


def test_fhir_export_is_a_bundle_of_r4_audit_events(client, owner, trail):
    client.force_login(owner)

    bundle = fhir_bundle(client, trail, action="study")

    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    resources = [entry["resource"] for entry in bundle["entry"]]
    assert [r["resourceType"] for r in resources] == ["AuditEvent", "AuditEvent"]
    for entry, resource in zip(bundle["entry"], resources, strict=True):
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
        # The elements R4 requires (cardinality 1..1 or 1..*).
        assert resource["type"]["system"] and resource["type"]["code"]
        assert resource["recorded"]
        assert resource["agent"] and all(isinstance(a["requestor"], bool) for a in resource["agent"])
        assert resource["source"]["observer"]["display"] == "PACS Portal"
        assert resource["source"]["site"] == str(trail.uuid)


def test_fhir_export_validates_against_the_hl7_models(client, owner, trail):
    from fhir.resources.R4B.bundle import Bundle

    client.force_login(owner)

    bundle = Bundle.model_validate(fhir_bundle(client, trail))

    assert {entry.resource.__resource_type__ for entry in bundle.entry} == {"AuditEvent"}
    assert len(bundle.entry) >= 6


def test_fhir_export_maps_action_outcome_agent_and_entity(client, owner, admin, trail):
    client.force_login(owner)

    resources = {
        e["resource"]["subtype"][-1]["code"]: e["resource"]
        for e in fhir_bundle(client, trail)["entry"]
        if e["resource"]["entity"][0].get("what", {}).get("identifier", {}).get("value", "").startswith("t-")
    }

    deleted = resources["study.deleted"]
    assert deleted["action"] == "D"
    assert deleted["type"]["code"] == "110105"
    assert deleted["outcome"] == "0"
    assert deleted["entity"][0]["what"]["identifier"] == {"system": "urn:pacs-portal:object:study",
                                                         "value": "t-deleted"}
    assert deleted["agent"][0]["who"]["identifier"]["value"] == str(owner.uuid)
    assert resources["study.viewed"]["action"] == "R"
    assert resources["study.viewed"]["type"]["code"] == "110103"
    assert resources["api_token.created"]["action"] == "C"
    assert resources["api_token.created"]["type"]["code"] == "110137"
    login = resources["auth.login"]
    assert login["action"] == "E"
    assert login["type"]["code"] == "110114"
    assert login["subtype"][0]["code"] == "110122"
    assert login["agent"][0]["network"] == {"address": "203.0.113.7", "type": "2"}
    assert login["entity"][0]["type"]["code"] == "1"
    failed = resources["auth.login_failed"]
    assert failed["outcome"] == "4"
    assert failed["outcomeDesc"] == "failure"


def test_fhir_export_ids_are_stable(client, owner, trail):
    client.force_login(owner)

    first = [e["resource"]["id"] for e in fhir_bundle(client, trail, action="study")["entry"]]
    second = [e["resource"]["id"] for e in fhir_bundle(client, trail, action="study")["entry"]]

    assert first == second
    assert len(set(first)) == 2


def test_api_lists_filtered_entries_for_an_admin_token(client, trail, owner):
    token = services.api_token_create(clinic=trail, name="siem", role=Role.ADMIN, created_by=owner)

    response = client.get(api_url(trail), {"action": "study"}, HTTP_AUTHORIZATION=f"Bearer {token.secret}")

    assert response.status_code == HTTPStatus.OK
    body = response.json()
    assert body["count"] == 2
    assert [r["object_id"] for r in body["results"]] == ["t-deleted", "t-viewed"]
    assert set(body["results"][0]) >= {"sequence", "recorded_at", "actor", "object_id", "result", "hash"}
    viewed = AuditEvent.objects.for_clinic(trail).get(action="audit.viewed")
    assert viewed.actor_label == "token:siem"
    assert viewed.details == {"filters": {"action": "study"}, "via": "api"}


def test_api_works_with_the_browser_session(client, owner, trail):
    client.force_login(owner)

    response = client.get(api_url(trail), {"limit": 2, "object": "t-"})

    assert response.status_code == HTTPStatus.OK
    assert response.json()["count"] == 5
    assert [r["object_id"] for r in response.json()["results"]] == ["t-token", "t-deleted"]


def test_api_refuses_a_token_without_manage_right(client, trail, owner):
    token = services.api_token_create(clinic=trail, name="ris2", role=Role.CLINICIAN, created_by=owner)

    response = client.get(api_url(trail), HTTP_AUTHORIZATION=f"Bearer {token.secret}")

    assert response.status_code == HTTPStatus.FORBIDDEN
    assert "audit log" in response.json()["message"]


def test_api_rejects_bad_filters_with_a_message(client, owner, trail):
    client.force_login(owner)

    response = client.get(api_url(trail), {"date_from": "2026-03-02", "date_to": "2026-03-01"})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "before the 'From' date" in json.dumps(response.json())


def test_api_outsider_token_gets_404(client, trail, other_clinic, outsider):
    token = services.api_token_create(clinic=other_clinic, name="b", role=Role.OWNER, created_by=outsider)

    response = client.get(api_url(trail), HTTP_AUTHORIZATION=f"Bearer {token.secret}")

    assert response.status_code == HTTPStatus.NOT_FOUND


def test_api_anonymous_gets_401(client, trail):
    response = client.get(api_url(trail))

    assert response.status_code == HTTPStatus.UNAUTHORIZED


@pytest.mark.parametrize(("action", "code", "event_type"), [
    ("auth.logout_everywhere", "E", "110114"),
    ("member.removed", "D", "110136"),
    ("dimse.retrieve", "R", "110104"),
    ("anonymization.reidentified", "R", "110110"),
    # Not in the table: mapped by family and verb.
    ("billing.data_destroyed", "D", "110100"),
    ("study.searched", "E", "110112"),
    ("series.viewed", "R", "110103"),
    ("security.policy_changed", "U", "110137"),
])
def test_actions_map_to_fhir_action_codes_and_dicom_event_types(action, code, event_type):
    assert audit_export.fhir_action_code(action) == code
    assert audit_export.fhir_type(action, code) == {
        "system": "http://dicom.nema.org/resources/ontology/DCM", "code": event_type,
        "display": audit_export._DCM_TYPES[event_type],
    }


def test_every_known_action_maps_to_a_valid_code():
    for action, (event_type, code) in audit_export.KNOWN_ACTIONS.items():
        assert code in {"C", "R", "U", "D", "E"}, action
        assert event_type in audit_export._DCM_TYPES, action

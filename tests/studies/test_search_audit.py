"""Lists of patients are audited: the studies page, REST study search and the dashboard's recent studies
record who searched, with which keys and how many studies were shown, and never the patient data."""

from __future__ import annotations

import json
from datetime import date
from http import HTTPStatus

from django.test import Client
from django.utils import timezone

from studies.models import QuarantinedInstance
from tenants import services as tenant_services
from tenants.models import AuditEvent
from tenants.roles import Role
from tests.factories import make_study

PATIENT = {"patient_name": "DOE^JANE", "patient_id": "A100-SECRET", "accession_number": "ACC-77"}


def searches(clinic):
    return list(AuditEvent.objects.for_clinic(clinic).filter(action="study.searched").order_by("sequence"))


def assert_no_patient_data(event):
    text = json.dumps(event.details) + event.object_id
    for value in ("DOE", "JANE", "doe", "A100", "ACC-77", "1970"):
        assert value not in text


def test_studies_page_search_is_audited_with_keys_and_count(client, clinic, clinician):
    make_study(clinic=clinic, study_date=date(2024, 3, 1), modalities_in_study="CT", **PATIENT)
    make_study(clinic=clinic, patient_name="SMITH^JOHN", patient_id="B2")
    client.force_login(clinician)

    response = client.get(f"/c/{clinic.slug}/studies/", {"patient_name": "doe", "patient_id": "A100-SECRET",
                                                          "modality": "CT"})

    assert response.status_code == HTTPStatus.OK
    event = searches(clinic)[0]
    assert event.actor == clinician
    assert event.details["source"] == "studies_page"
    assert event.details["count"] == 1
    assert set(event.details["keys"]) == {"patient_name", "patient_id", "modality"}
    assert event.details["modality"] == "CT"
    assert_no_patient_data(event)


def test_rest_study_search_is_audited(client, clinic):
    make_study(clinic=clinic, **PATIENT)
    secret = tenant_services.api_token_create(clinic=clinic, name="RIS", role=Role.CLINICIAN).secret

    response = client.get(f"/api/v1/clinics/{clinic.slug}/studies/", {"patient_name": "doe*"},
                          HTTP_AUTHORIZATION=f"Bearer {secret}")

    assert response.status_code == HTTPStatus.OK
    (event,) = searches(clinic)
    assert event.actor_label == "token:RIS"
    assert (event.details["source"], event.details["count"], event.details["keys"]) == ("api", 1, ["patient_name"])
    assert_no_patient_data(event)


def test_dashboard_recent_studies_are_audited(client, clinic, clinician):
    make_study(clinic=clinic, **PATIENT)
    client.force_login(clinician)

    response = client.get(f"/c/{clinic.slug}/")

    assert response.status_code == HTTPStatus.OK and b"DOE" in response.content
    (event,) = searches(clinic)
    assert (event.details["source"], event.details["count"]) == ("dashboard", 1)
    assert_no_patient_data(event)


def test_a_dashboard_without_patient_data_records_no_search(client, clinic, billing_admin):
    make_study(clinic=clinic, **PATIENT)
    client.force_login(billing_admin)

    client.get(f"/c/{clinic.slug}/")

    assert searches(clinic) == []


def test_outsider_search_gets_404_and_records_nothing_in_the_clinic(clinic, outsider):
    make_study(clinic=clinic, **PATIENT)
    outsider_client = Client()
    outsider_client.force_login(outsider)

    page = outsider_client.get(f"/c/{clinic.slug}/studies/")
    api = outsider_client.get(f"/api/v1/clinics/{clinic.slug}/studies/")

    assert (page.status_code, api.status_code) == (HTTPStatus.NOT_FOUND, HTTPStatus.NOT_FOUND)
    assert searches(clinic) == []


def test_the_trash_page_is_audited_as_a_list_shown(client, clinic, owner):
    make_study(clinic=clinic, deleted_at=timezone.now(), **PATIENT)
    client.force_login(owner)

    response = client.get(f"/c/{clinic.slug}/studies/trash/")

    assert "DOE" in response.content.decode()
    [event] = searches(clinic)
    assert (event.actor, event.details["source"], event.details["count"]) == (owner, "trash_page", 1)
    assert_no_patient_data(event)


def test_the_quarantine_page_is_audited_as_a_list_shown(client, clinic, owner):
    QuarantinedInstance.objects.create(
        clinic=clinic, reason=QuarantinedInstance.Reason.PATIENT_MISMATCH, source="upload",
        sop_instance_uid="1.2.3.4.1", series_instance_uid="1.2.3.4.2", study_instance_uid="1.2.3.4.3",
        patient_id=PATIENT["patient_id"], patient_name=PATIENT["patient_name"], size_bytes=1, sha256="0" * 64,
        object_key=f"clinics/{clinic.uuid}/objects/0f0e0d0c-0b0a-4908-8706-050403020100", key_id="k1",
    )
    client.force_login(owner)

    response = client.get(f"/c/{clinic.slug}/studies/quarantine/")

    assert PATIENT["patient_id"] in response.content.decode()
    [event] = searches(clinic)
    assert (event.details["source"], event.details["count"]) == ("quarantine_page", 1)
    assert_no_patient_data(event)

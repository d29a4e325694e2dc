"""Who sent an instance, as the audit trail names it: one door after the other, through the real views.

An ``Origin`` carries a ``tenants.audit.Actor`` (built by ``Actor.from_request`` for the web doors), so a
store is audited with the same person, label and address as any other action of that request.
"""

from __future__ import annotations

from http import HTTPStatus

from studies.ingest import Origin, OriginKind, instance_ingest
from studies.models import DicomNode
from studies.sharing import services as sharing_services
from tenants import services as tenant_services
from tenants.audit import Actor
from tenants.models import AuditEvent, Clinic
from tests.dicom_files import write_ct

ADDRESS = "203.0.113.9"


def _stored_entry(clinic: Clinic) -> tuple[object, str, str | None]:
    event = AuditEvent.objects.for_clinic(clinic).get(action="study.stored")
    return event.actor, event.actor_label, event.ip_address


def test_a_member_uploading_from_the_page_is_named_with_the_address(client, clinic, uploader, tmp_path):
    client.force_login(uploader)
    with write_ct(tmp_path / "ct.dcm").open("rb") as fileobj:
        response = client.post(f"/c/{clinic.slug}/upload/files/", {"file": fileobj}, REMOTE_ADDR=ADDRESS)

    assert response.status_code == HTTPStatus.CREATED
    assert _stored_entry(clinic) == (uploader, uploader.email, ADDRESS)


def test_an_api_token_upload_is_named_by_the_token_and_never_a_person(client, clinic, tmp_path):
    created = tenant_services.api_token_create(clinic=clinic, name="pacs-bridge", role="uploader")
    with write_ct(tmp_path / "ct.dcm").open("rb") as fileobj:
        response = client.post(f"/api/v1/clinics/{clinic.slug}/uploads/", {"file": fileobj}, REMOTE_ADDR=ADDRESS,
                               HTTP_AUTHORIZATION=f"Bearer {created.secret}")

    assert response.status_code == HTTPStatus.CREATED
    assert _stored_entry(clinic) == (None, created.token.label, ADDRESS)
    assert created.token.label == "token:pacs-bridge"


def test_an_upload_link_sender_is_named_by_the_link(client, clinic, owner, tmp_path):
    created = sharing_services.upload_link_create(clinic=clinic, created_by=owner)
    with write_ct(tmp_path / "ct.dcm").open("rb") as fileobj:
        response = client.post(f"/u/{created.token}/files/", {"file": fileobj}, REMOTE_ADDR=ADDRESS)

    assert response.status_code == HTTPStatus.CREATED
    assert _stored_entry(clinic) == (None, f"upload_link:{created.link.uuid}", ADDRESS)
    # The link's own entry (a file arrived) names the same actor: both come from Actor.from_request.
    received = AuditEvent.objects.for_clinic(clinic).get(action="upload_link.received")
    assert (received.actor_label, received.ip_address) == (f"upload_link:{created.link.uuid}", ADDRESS)


def test_doors_without_a_request_name_their_node_job_or_person(clinic, uploader, tmp_path):
    node = DicomNode.objects.create(clinic=clinic, ae_title="CT_SCANNER", host="127.0.0.1", port=104)
    link = sharing_services.upload_link_create(clinic=clinic, created_by=uploader).link
    cases = [
        (Origin.dicom(node=node, address="198.51.100.4"), (None, "dicom:CT_SCANNER", "198.51.100.4")),
        (Origin.upload_batch(user=uploader), (uploader, uploader.email, None)),
        (Origin.upload_batch(user=uploader, upload_link=link), (None, f"upload_link:{link.uuid}", None)),
        (Origin.system(source="test"), (None, "system", None)),
    ]
    for number, (origin, expected) in enumerate(cases):
        path = write_ct(tmp_path / f"{number}.dcm", study_uid=f"1.2.826.0.1.3680043.8.498.{900 + number}")
        instance_ingest(clinic=clinic, source_path=str(path), origin=origin)
        event = AuditEvent.objects.for_clinic(clinic).filter(action="study.stored").order_by("-sequence").first()

        assert (event.actor, event.actor_label, event.ip_address) == expected, origin.source


def test_a_request_origin_is_its_actor_with_the_token_or_link_beside_it(rf, clinic, owner):
    token = tenant_services.api_token_create(clinic=clinic, name="bridge", role="uploader").token
    request = rf.post("/", REMOTE_ADDR=ADDRESS, HTTP_USER_AGENT="Uploader/1.0")
    request.api_token = token

    origin = Origin.from_request(request, source="dicomweb")

    assert origin.actor == Actor.from_request(request)
    assert (origin.kind, origin.api_token, origin.upload_link, origin.user) == (OriginKind.API_TOKEN, token, None, None)
    assert origin.actor_label == "token:bridge"

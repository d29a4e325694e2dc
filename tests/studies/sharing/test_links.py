"""Share and upload links as their users see them: used-up links, one patient per link, what an outside
sender is told, the lock e-mails, and the clinic's pages about its links."""

from __future__ import annotations

import io
from http import HTTPStatus

import pytest
from django.core import mail

from studies.models import Study
from studies.names import person_name_display
from studies.sharing import services
from studies.sharing.models import Share
from tenants import services as tenant_services
from tenants.models import AuditEvent, Clinic
from tenants.roles import Role
from tests.dicom_files import PYDICOM_SAMPLES as SAMPLES
from tests.factories import make_member, make_user

pytestmark = pytest.mark.django_db

DICOM_JSON = "application/dicom+json"
NEUTRAL_REASON = "The clinic cannot receive files right now; try again later."


def use_up(client, share: services.NewShare, pin: str = "") -> None:
    """Use the link's only open in the client's session, then forget the session."""
    if pin:
        assert client.post(f"/s/{share.token}/", {"pin": pin}).status_code == HTTPStatus.FOUND
    assert client.get(f"/s/{share.token}/").status_code == HTTPStatus.OK
    client.cookies.clear()


def upload(client, url: str, name: str = "MR_small.dcm"):
    return client.post(url, {"file": io.BytesIO((SAMPLES / name).read_bytes())})


# --- a used-up link ----------------------------------------------------------------------------------


def test_used_up_pin_link_answers_a_fresh_session_like_a_revoked_link(client, clinic, clinician, study):
    used_up = services.share_create(clinic=clinic, studies=[study], created_by=clinician, pin="2468", max_opens=1)
    use_up(client, used_up, pin="2468")
    revoked = services.share_create(clinic=clinic, studies=[study], created_by=clinician, pin="2468")
    services.share_revoke(share=revoked.share, user=None)

    fresh = client.get(f"/s/{used_up.token}/")
    gone = client.get(f"/s/{revoked.token}/")
    fresh_dicomweb = client.get(f"/s/{used_up.token}/dicomweb/studies", HTTP_ACCEPT=DICOM_JSON)
    gone_dicomweb = client.get(f"/s/{revoked.token}/dicomweb/studies", HTTP_ACCEPT=DICOM_JSON)

    assert fresh.status_code == HTTPStatus.NOT_FOUND
    assert b"Enter the PIN" not in fresh.content
    assert fresh.content == gone.content
    assert fresh_dicomweb.status_code == HTTPStatus.NOT_FOUND
    assert fresh_dicomweb.content == gone_dicomweb.content


def test_strangers_cannot_lock_a_used_up_link_or_mail_its_creator(client, clinic, clinician, study):
    created = services.share_create(clinic=clinic, studies=[study], created_by=clinician, pin="2468", max_opens=1)
    use_up(client, created, pin="2468")

    answers = [client.post(f"/s/{created.token}/", {"pin": "0000"}).status_code for _ in range(6)]

    assert answers == [HTTPStatus.NOT_FOUND] * 6
    assert Share.objects.get(pk=created.share.pk).locked_until is None
    assert mail.outbox == []


def test_the_session_that_used_the_last_open_keeps_the_link(client, clinic, clinician, study):
    created = services.share_create(clinic=clinic, studies=[study], created_by=clinician, pin="2468", max_opens=1)
    client.post(f"/s/{created.token}/", {"pin": "2468"})
    client.get(f"/s/{created.token}/")

    page = client.get(f"/s/{created.token}/")
    dicomweb = client.get(f"/s/{created.token}/dicomweb/studies", HTTP_ACCEPT=DICOM_JSON)

    assert page.status_code == HTTPStatus.OK
    assert study.study_description.encode() in page.content
    assert dicomweb.status_code == HTTPStatus.OK
    assert Share.objects.get(pk=created.share.pk).open_count == 1


# --- one link, one patient ---------------------------------------------------------------------------


def test_api_refuses_a_link_holding_studies_of_two_patients(client, clinic, clinician, study, other_study):
    client.force_login(clinician)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/shares/",
                           {"studies": [study.study_instance_uid, other_study.study_instance_uid]},
                           content_type="application/json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert "one patient" in response.json()["message"]
    assert not Share.objects.exists()


def test_share_page_refuses_studies_of_two_patients(client, clinic, clinician, study, other_study):
    client.force_login(clinician)

    response = client.post(f"/c/{clinic.slug}/shares/new/", {"study": [str(study.uuid), str(other_study.uuid)]},
                           follow=True)

    assert "A link shares the studies of one patient" in response.content.decode()
    assert not Share.objects.exists()


# --- what an upload link tells its sender ------------------------------------------------------------


def test_upload_link_over_quota_tells_the_sender_nothing_of_the_clinics_storage(client, clinic, owner):
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=1000)
    created = services.upload_link_create(clinic=clinic, created_by=owner)

    response = upload(client, f"/u/{created.token}/files/")

    assert response.status_code == HTTPStatus.INSUFFICIENT_STORAGE
    assert response.json()["reason"] == NEUTRAL_REASON
    assert not Study.objects.for_clinic(clinic).exists()


def test_upload_link_with_storage_full_tells_the_sender_to_try_later(client, clinic, owner, settings):
    settings.PRIMARY_STORE_MIN_FREE_BYTES = 10**18  # more than any disk has free: the store counts as full
    created = services.upload_link_create(clinic=clinic, created_by=owner)

    response = upload(client, f"/u/{created.token}/files/")

    assert response.status_code == HTTPStatus.SERVICE_UNAVAILABLE
    assert response.json()["reason"] == NEUTRAL_REASON
    assert not Study.objects.for_clinic(clinic).exists()


def test_clinic_user_over_quota_still_sees_the_space_left(client, clinic, owner):
    Clinic.objects.filter(pk=clinic.pk).update(quota_bytes=1000)
    client.force_login(owner)

    response = upload(client, f"/c/{clinic.slug}/upload/files/")

    assert response.status_code == HTTPStatus.INSUFFICIENT_STORAGE
    assert "of the clinic's 1.0 KB is free" in response.json()["reason"]


# --- lock e-mails --------------------------------------------------------------------------------------


def test_upload_link_lock_mail_names_the_upload_link_and_its_page(client, clinic, owner):
    created = services.upload_link_create(clinic=clinic, created_by=owner, pin="1357", note="CDs from St. Elsewhere")

    for _ in range(5):
        client.post(f"/u/{created.token}/", {"pin": "0000"})

    [message] = mail.outbox
    assert message.to == [owner.email]
    assert "an upload link was locked" in message.subject
    assert '"CDs from St. Elsewhere"' in message.body
    assert f"http://testserver/c/{clinic.slug}/shares/" in message.body


def test_share_link_lock_mail_names_the_link_and_its_page(client, clinic, clinician, study):
    created = services.share_create(clinic=clinic, studies=[study], created_by=clinician, pin="2468",
                                    note="For Dr Who")

    for _ in range(5):
        client.post(f"/s/{created.token}/", {"pin": "0000"})

    [message] = mail.outbox
    assert "a share link was locked" in message.subject
    assert '"For Dr Who"' in message.body
    assert f"http://testserver/c/{clinic.slug}/shares/{created.share.uuid}/" in message.body


# --- the clinic's pages about its links ----------------------------------------------------------------


def test_used_up_link_is_shown_as_used_up_not_active(client, clinic, clinician, study):
    created = services.share_create(clinic=clinic, studies=[study], created_by=clinician, max_opens=1)
    use_up(client, created)
    client.force_login(clinician)

    listed = client.get(f"/c/{clinic.slug}/shares/").content.decode()
    detail = client.get(f"/c/{clinic.slug}/shares/{created.share.uuid}/").content.decode()

    assert '<span class="badge">used up</span>' in listed and 'badge ok">active' not in listed
    assert "<strong>used up</strong>" in detail and "<strong>active</strong>" not in detail


def test_share_page_shows_the_patient_name_as_family_given(client, clinic, clinician, study):
    created = services.share_create(clinic=clinic, studies=[study], created_by=clinician)
    client.force_login(clinician)
    raw = study.patient.patient_name

    detail = client.get(f"/c/{clinic.slug}/shares/{created.share.uuid}/").content.decode()

    assert "^" in raw and raw not in detail
    assert person_name_display(raw) in detail


def test_a_removed_member_gets_no_more_mail_about_the_upload_link_they_made(client, clinic, owner):
    """The mails name the link's note, which may name a patient."""
    carl = make_member(clinic=clinic, role=Role.CLINICIAN, user=make_user(email="carl@former.example"))
    link = services.upload_link_create(clinic=clinic, created_by=carl, note="CD of Jane DOE")
    tenant_services.membership_remove(membership=clinic.memberships.get(user=carl),
                                      granted_by=clinic.memberships.get(user=owner))

    with (SAMPLES / "CT_small.dcm").open("rb") as fileobj:
        assert client.post(f"/u/{link.token}/files/", {"file": fileobj}).status_code == HTTPStatus.CREATED

    assert mail.outbox and all("carl@former.example" not in message.to for message in mail.outbox)


def test_the_share_page_and_the_share_form_are_audited(client, clinic, clinician, study):
    share = services.share_create(clinic=clinic, studies=[study], created_by=clinician).share
    client.force_login(clinician)

    client.get(f"/c/{clinic.slug}/shares/{share.uuid}/")
    client.get(f"/c/{clinic.slug}/shares/new/", {"study": str(study.uuid)})

    entries = AuditEvent.objects.for_clinic(clinic).filter(action__in=["share.viewed", "study.searched"])
    assert [(e.action, e.object_id or e.details.get("source")) for e in entries.order_by("sequence")] == [
        ("share.viewed", str(share.uuid)), ("study.searched", "share_form"),
    ]

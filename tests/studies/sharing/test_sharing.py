"""Share links, patient access codes and upload links: creation, PIN lockout, expiry, revocation, scoping."""

from __future__ import annotations

import io
import types
import zipfile
from datetime import timedelta
from http import HTTPStatus

import pytest
from django.core import mail
from django.utils import timezone

from studies.models import Instance, Study
from studies.sharing import public_views, services
from studies.sharing.models import Share, ShareAccess, UploadLink
from tenants.models import AuditEvent
from tests.dicom_files import PYDICOM_SAMPLES as SAMPLES
from tests.studies.sharing.support import store


def make_share(clinic, study, user=None, **options) -> services.NewShare:
    return services.share_create(clinic=clinic, studies=[study], created_by=user, **options)


def test_api_creates_a_link_that_shows_its_token_once(client, clinic, clinician, study):
    client.force_login(clinician)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/shares/",
                           {"studies": [study.study_instance_uid], "expires_in_days": 7, "pin": "4321",
                            "allow_download": True}, content_type="application/json")

    assert response.status_code == HTTPStatus.CREATED
    body = response.json()
    assert body["url"].endswith(f"/s/{body['token']}/")
    assert len(body["token"]) >= 43  # 256 bits, URL-safe
    share = Share.objects.get(uuid=body["id"])
    assert body["token"] not in share.token_hash and share.pin_hash != "4321"
    listed = client.get(f"/api/v1/clinics/{clinic.slug}/shares/").json()["results"]
    assert "token" not in listed[0] and listed[0]["studies"] == [study.study_instance_uid]


@pytest.mark.parametrize("days", [0, 91])
def test_expiry_outside_1_to_90_days_is_refused(client, clinic, clinician, study, days):
    client.force_login(clinician)

    response = client.post(f"/api/v1/clinics/{clinic.slug}/shares/",
                           {"studies": [study.study_instance_uid], "expires_in_days": days},
                           content_type="application/json")

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not Share.objects.exists()


def test_uploader_cannot_share_and_outsider_gets_404(client, clinic, uploader, outsider, study):
    client.force_login(uploader)
    refused = client.post(f"/api/v1/clinics/{clinic.slug}/shares/", {"studies": [study.study_instance_uid]},
                          content_type="application/json")
    client.force_login(outsider)
    hidden = client.post(f"/api/v1/clinics/{clinic.slug}/shares/", {"studies": [study.study_instance_uid]},
                         content_type="application/json")

    assert (refused.status_code, hidden.status_code) == (HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND)
    assert not Share.objects.exists()


def test_recipient_opens_a_link_without_pin_and_it_is_logged(client, clinic, study):
    created = make_share(clinic, study)

    page = client.get(f"/s/{created.token}/", HTTP_USER_AGENT="RefBrowser/1.0")

    assert page.status_code == HTTPStatus.OK
    assert study.study_description.encode() in page.content
    access = ShareAccess.objects.get(share=created.share, action="opened")
    assert access.user_agent == "RefBrowser/1.0" and access.ip_address == "127.0.0.1"
    assert Share.objects.get(pk=created.share.pk).open_count == 1


def test_pin_protected_link_wants_the_right_pin(client, clinic, study):
    created = make_share(clinic, study, pin="2468")

    gate = client.get(f"/s/{created.token}/")
    wrong = client.post(f"/s/{created.token}/", {"pin": "1111"})
    right = client.post(f"/s/{created.token}/", {"pin": "2468"})
    page = client.get(f"/s/{created.token}/")

    assert b"Enter the PIN" in gate.content and study.study_description.encode() not in gate.content
    assert wrong.status_code == HTTPStatus.BAD_REQUEST
    assert right.status_code == HTTPStatus.FOUND
    assert study.study_description.encode() in page.content


def test_five_wrong_pins_lock_the_link_and_tell_its_creator(client, clinic, clinician, study):
    created = make_share(clinic, study, user=clinician, pin="2468")

    for _ in range(5):
        client.post(f"/s/{created.token}/", {"pin": "0000"})
    locked = client.post(f"/s/{created.token}/", {"pin": "2468"})

    assert locked.status_code == HTTPStatus.TOO_MANY_REQUESTS
    assert b"locked for 15 minutes" in locked.content
    assert [m.to for m in mail.outbox] == [[clinician.email]]
    Share.objects.filter(pk=created.share.pk).update(locked_until=timezone.now() - timedelta(seconds=1))
    assert client.post(f"/s/{created.token}/", {"pin": "2468"}).status_code == HTTPStatus.FOUND


def test_unknown_expired_and_revoked_links_answer_the_same(client, clinic, study):
    expired = make_share(clinic, study)
    Share.objects.filter(pk=expired.share.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = make_share(clinic, study)
    services.share_revoke(share=revoked.share, user=None)

    answers = [client.get(f"/s/{token}/") for token in ("x" * 43, expired.token, revoked.token)]

    assert {a.status_code for a in answers} == {HTTPStatus.NOT_FOUND}
    assert len({a.content for a in answers}) == 1


def test_revocation_stops_a_recipient_in_the_middle_of_viewing(client, clinic, study):
    created = make_share(clinic, study)
    base = f"/s/{created.token}/dicomweb/studies/{study.study_instance_uid}"
    assert client.get(base + "/series", HTTP_ACCEPT="application/dicom+json").status_code == HTTPStatus.OK

    services.share_revoke(share=created.share, user=None)

    assert client.get(base + "/series", HTTP_ACCEPT="application/dicom+json").status_code == HTTPStatus.NOT_FOUND
    assert client.get(f"/s/{created.token}/studies/{study.uuid}/").status_code == HTTPStatus.NOT_FOUND


def test_share_dicomweb_exposes_only_the_shared_study(client, clinic, study, other_study):
    created = make_share(clinic, study)
    base = f"/s/{created.token}/dicomweb/"

    shared = client.get(base + f"studies/{study.study_instance_uid}/metadata")
    other = client.get(base + f"studies/{other_study.study_instance_uid}/metadata")
    other_series = client.get(base + f"studies/{other_study.study_instance_uid}/series")
    store = client.post(base + "studies", b"", content_type='multipart/related; type="application/dicom"')

    assert shared.status_code == HTTPStatus.OK
    assert (other.status_code, other_series.status_code) == (HTTPStatus.NOT_FOUND, HTTPStatus.NOT_FOUND)
    assert store.status_code == HTTPStatus.METHOD_NOT_ALLOWED


def test_share_dicomweb_search_lists_only_shared_studies(client, clinic, study, other_study):
    created = make_share(clinic, study)

    found = client.get(f"/s/{created.token}/dicomweb/studies", HTTP_ACCEPT="application/dicom+json").json()

    assert [item["0020000D"]["Value"][0] for item in found] == [study.study_instance_uid]


def test_a_study_from_another_clinic_cannot_be_shared(clinic, other_clinic, tmp_path):
    foreign = store(other_clinic, "CT_small.dcm", tmp_path)

    with pytest.raises(services.PortalError):
        services.share_create(clinic=clinic, studies=[foreign], created_by=None)


def test_download_only_when_allowed_and_bytes_match(client, clinic, study):
    view_only = make_share(clinic, study)
    downloadable = make_share(clinic, study, allow_download=True)

    refused = client.get(f"/s/{view_only.token}/studies/{study.uuid}/download/")
    allowed = client.get(f"/s/{downloadable.token}/studies/{study.uuid}/download/")

    assert refused.status_code == HTTPStatus.FORBIDDEN
    archive = zipfile.ZipFile(io.BytesIO(b"".join(allowed.streaming_content)))
    assert [archive.read(n) for n in archive.namelist()] == [(SAMPLES / "CT_small.dcm").read_bytes()]
    assert ShareAccess.objects.filter(share=downloadable.share, action="downloaded").count() == 1


def test_deleted_study_disappears_from_its_link(client, clinic, study):
    created = make_share(clinic, study)

    Study.objects.filter(pk=study.pk).update(deleted_at=timezone.now())

    page = client.get(f"/s/{created.token}/")
    assert b"Nothing is shared here any more" in page.content
    assert client.get(f"/s/{created.token}/studies/{study.uuid}/").status_code == HTTPStatus.NOT_FOUND


def test_link_with_a_maximum_number_of_opens(clinic, study, client):
    created = make_share(clinic, study, max_opens=1)

    first = client.get(f"/s/{created.token}/")
    client.cookies.clear()
    second = client.get(f"/s/{created.token}/")

    assert (first.status_code, second.status_code) == (HTTPStatus.OK, HTTPStatus.NOT_FOUND)


def test_clinic_revokes_and_extends_from_its_pages(client, clinic, clinician, study):
    created = make_share(clinic, study, user=clinician)
    client.force_login(clinician)

    client.post(f"/c/{clinic.slug}/shares/{created.share.uuid}/extend/", {"days": 30})
    extended = Share.objects.get(pk=created.share.pk).expires_at
    client.post(f"/c/{clinic.slug}/shares/{created.share.uuid}/revoke/")

    assert timedelta(days=29) < extended - timezone.now() <= timedelta(days=30)
    assert Share.objects.get(pk=created.share.pk).revoked_at is not None
    assert AuditEvent.objects.filter(clinic=clinic, action__in=["share.extended", "share.revoked"]).count() == 2


def test_patient_access_code_opens_the_study_with_its_pin(client, clinic, clinician, study):
    client.force_login(clinician)
    sheet = client.post(f"/c/{clinic.slug}/shares/new/", {"study": [str(study.uuid)], "kind": "patient",
                                                          "expires_in_days": 30, "pin": "97531"})
    code = sheet.context["access_code"]
    client.logout()

    to_link = client.post("/access/", {"code": code.lower()})
    gate = client.post(to_link["Location"], {"pin": "97531"})
    page = client.get(to_link["Location"])

    assert b"<svg" in sheet.content
    assert gate.status_code == HTTPStatus.FOUND
    assert study.study_description.encode() in page.content
    assert Share.objects.get().allow_download


def test_patient_access_code_requires_a_pin(client, clinic, clinician, study):
    client.force_login(clinician)

    response = client.post(f"/c/{clinic.slug}/shares/new/", {"study": [str(study.uuid)], "kind": "patient",
                                                             "expires_in_days": 30})

    assert response.status_code == HTTPStatus.BAD_REQUEST
    assert not Share.objects.exists()


def test_upload_link_lets_an_outsider_send_a_study_without_seeing_anything(client, clinic, owner, study):
    created = services.upload_link_create(clinic=clinic, created_by=owner, pin="1357")
    url = f"/u/{created.token}/"

    client.post(url, {"pin": "1357"})
    new = client.post(url + "files/", {"file": io.BytesIO((SAMPLES / "MR_small.dcm").read_bytes())})
    known = client.post(url + "files/", {"file": io.BytesIO((SAMPLES / "CT_small.dcm").read_bytes())})

    assert new.json() == {"outcome": "stored", "reason": ""}
    assert known.json() == {"outcome": "stored", "reason": ""}  # "already present" would reveal what is stored
    assert Study.objects.for_clinic(clinic).count() == 2
    assert UploadLink.objects.get().received_count == 1
    assert any("arrived through an upload link" in m.subject for m in mail.outbox)


def test_revoked_upload_link_accepts_nothing(client, clinic, owner):
    created = services.upload_link_create(clinic=clinic, created_by=owner)
    services.upload_link_revoke(link=created.link, user=owner)

    response = client.post(f"/u/{created.token}/files/", {"file": io.BytesIO((SAMPLES / "MR_small.dcm").read_bytes())})

    assert response.status_code == HTTPStatus.NOT_FOUND
    assert not Study.objects.for_clinic(clinic).exists()


def test_clinic_viewer_page_is_audited_and_outsider_gets_404(client, clinic, clinician, outsider, study):
    client.force_login(clinician)
    page = client.get(f"/c/{clinic.slug}/viewer/{study.uuid}/")
    client.force_login(outsider)
    hidden = client.get(f"/c/{clinic.slug}/viewer/{study.uuid}/")

    assert page.status_code == HTTPStatus.OK and b"viewer-config" in page.content
    assert hidden.status_code == HTTPStatus.NOT_FOUND
    assert AuditEvent.objects.filter(clinic=clinic, action="study.viewer_opened").count() == 1


def test_a_used_up_link_serves_nothing_to_a_fresh_session(client, clinic, study):
    created = make_share(clinic, study, max_opens=1, allow_download=True)
    assert client.get(f"/s/{created.token}/").status_code == HTTPStatus.OK
    client.cookies.clear()

    dicomweb = client.get(f"/s/{created.token}/dicomweb/studies", HTTP_ACCEPT="application/dicom+json")
    viewer = client.get(f"/s/{created.token}/studies/{study.uuid}/")
    download = client.get(f"/s/{created.token}/studies/{study.uuid}/download/")

    assert (dicomweb.status_code, viewer.status_code, download.status_code) == (HTTPStatus.NOT_FOUND,) * 3
    assert not ShareAccess.objects.filter(share=created.share, action__in=["viewed", "downloaded"]).exists()


def test_the_session_that_used_the_last_open_keeps_viewing(client, clinic, study):
    created = make_share(clinic, study, max_opens=1)
    client.get(f"/s/{created.token}/")

    viewer = client.get(f"/s/{created.token}/studies/{study.uuid}/")
    series = client.get(f"/s/{created.token}/dicomweb/studies/{study.study_instance_uid}/series",
                        HTTP_ACCEPT="application/dicom+json")

    assert (viewer.status_code, series.status_code) == (HTTPStatus.OK, HTTPStatus.OK)


def test_a_fresh_client_going_straight_to_dicomweb_uses_an_open(client, clinic, study):
    created = make_share(clinic, study, max_opens=1)

    first = client.get(f"/s/{created.token}/dicomweb/studies", HTTP_ACCEPT="application/dicom+json")
    client.cookies.clear()
    second = client.get(f"/s/{created.token}/dicomweb/studies", HTTP_ACCEPT="application/dicom+json")

    assert (first.status_code, second.status_code) == (HTTPStatus.OK, HTTPStatus.NOT_FOUND)
    assert Share.objects.get(pk=created.share.pk).open_count == 1


def test_a_wrong_pin_is_audited_as_a_failure(client, clinic, study):
    created = make_share(clinic, study, pin="2468")

    client.post(f"/s/{created.token}/", {"pin": "1111"})
    client.post(f"/s/{created.token}/", {"pin": "2468"})

    results = dict(AuditEvent.objects.filter(action__startswith="share.pin").values_list("action", "result"))
    assert results == {"share.pin_failed": "failure", "share.pin_ok": "success"}


def test_a_share_serves_frames_of_its_study_only(client, clinic, study, other_study):
    created = make_share(clinic, study)
    base = f"/s/{created.token}/dicomweb/"

    def frame_url(of: Study) -> str:
        instance = Instance.objects.filter(series__study=of).select_related("series").first()
        return (f"{base}studies/{of.study_instance_uid}/series/{instance.series.series_instance_uid}"
                f"/instances/{instance.sop_instance_uid}/frames/1")

    assert client.get(frame_url(study)).status_code == HTTPStatus.OK
    assert client.get(frame_url(other_study)).status_code == HTTPStatus.NOT_FOUND


def test_a_pin_grant_lapses_after_the_idle_limit_and_viewing_keeps_it(client, clinic, study, monkeypatch, settings):
    """On a shared computer the next person inherited the grant for as long as the browser stayed open."""
    now = [1_000_000.0]
    monkeypatch.setattr(public_views, "time", types.SimpleNamespace(time=lambda: now[0]))
    idle = settings.SESSION_IDLE_TIMEOUT.total_seconds()
    created = make_share(clinic, study, pin="2468")
    client.post(f"/s/{created.token}/", {"pin": "2468"})

    for _ in range(3):  # a reader looking for longer than the idle limit, a request every half of it
        now[0] += idle / 2
        assert study.study_description.encode() in client.get(f"/s/{created.token}/").content
    now[0] += idle + 1
    gate = client.get(f"/s/{created.token}/")

    assert b"Enter the PIN" in gate.content and study.study_description.encode() not in gate.content


def test_each_lock_after_wrong_pins_in_a_row_is_twice_as_long(client, clinic, clinician, study):
    """A flat 15 minutes let a patient guesser try a 4-digit PIN's 10,000 values within a 90-day link."""
    created = make_share(clinic, study, user=clinician, pin="2468")
    share = Share.objects.filter(pk=created.share.pk)

    def five_wrong() -> bytes:
        share.update(locked_until=None)  # the previous lock is over
        for _ in range(4):
            client.post(f"/s/{created.token}/", {"pin": "0000"})
        return client.post(f"/s/{created.token}/", {"pin": "0000"}).content

    assert b"locked for 15 minutes" in five_wrong()
    assert b"locked for 30 minutes" in five_wrong()
    assert b"locked for 60 minutes" in five_wrong()
    assert b"locked for 2 hours" in five_wrong()
    assert len(mail.outbox) == 4 and "2 hours" in mail.outbox[-1].body
    share.update(locked_until=None)
    assert client.post(f"/s/{created.token}/", {"pin": "2468"}).status_code == HTTPStatus.FOUND
    # A right PIN starts the count again.
    assert share.get().failed_pin_count == 0
